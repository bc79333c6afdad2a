"""Command line: ``python -m deploy.razorpay --port P --key-id ... --key-secret ...
--webhook-secret ... [--webhook-url URL] --db FILE``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from deploy.razorpay.server import RazorpayConfig, run_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.razorpay", description="A local Razorpay stand-in."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--key-id", default=os.environ.get("RF_RAZORPAY_KEY_ID"), required=False)
    parser.add_argument("--key-secret", default=os.environ.get("RF_RAZORPAY_KEY_SECRET"))
    parser.add_argument("--webhook-secret", default=os.environ.get("RF_RAZORPAY_WEBHOOK_SECRET"))
    parser.add_argument("--webhook-url", default=None, help="where webhooks are POSTed")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file of its state")
    args = parser.parse_args(argv)
    for name in ("key_id", "key_secret", "webhook_secret"):
        if not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = RazorpayConfig(
        key_id=args.key_id,
        key_secret=args.key_secret,
        webhook_secret=args.webhook_secret,
        db=args.db.resolve(),
        webhook_url=args.webhook_url,
    )
    run_forever(config, args.host, args.port)


if __name__ == "__main__":
    main()
