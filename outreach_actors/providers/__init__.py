"""Email providers: building and sending mail (sendgrid), reading their webhook events (events)."""
