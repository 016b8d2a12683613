"""The message maillab sends when nobody says otherwise: the subject and body of a check's
`send` step, of `Lab.send`, of `maillab send` and of the control channel's send."""

DEFAULT_SUBJECT = "maillab test"
DEFAULT_BODY = "Hello from maillab.\n"
