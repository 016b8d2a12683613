"""The built-in MTA, along a message's way: the SMTP front (smtpd, policy, behind the
frontend.Mta protocol), acceptance, the queue, delivery (next hop, outbound), DSNs, and
the table of a recipient's states (transitions); service.MtaService puts them together."""
