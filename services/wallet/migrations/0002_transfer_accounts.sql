-- Each transfer names the two ledger accounts it moved credits between (double entry).
-- Rows from before are filled by `renderctl rebuild --projection transfers`.
ALTER TABLE {schema}.transfers ADD COLUMN debit_account text;
ALTER TABLE {schema}.transfers ADD COLUMN credit_account text;
