"""The built-in MTA: the SMTP front (smtpd, policy), the queue, delivery (outbound), DSNs."""
