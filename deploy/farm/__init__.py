"""The local farm: a stand-in for Thinkbox Deadline 10 that speaks its Web Service REST subset.

Jobs, tasks, reports and workers live in one SQLite database; workers are separate OS processes
that claim tasks from it and render real files. See ``docs/farm.md``.
"""

#: Version reported by the ping banner (``GET /``).
VERSION = "10.3.2.1"
