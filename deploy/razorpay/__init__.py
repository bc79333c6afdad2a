"""A local stand-in for Razorpay: the REST subset the payments service uses, Checkout's
signed answer, and signed webhooks (``python -m deploy.razorpay``; docs/payments.md)."""
