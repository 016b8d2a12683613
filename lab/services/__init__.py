"""The services a lab host runs (DNS, the built-in MTA, POP3, fetch, the submission client),
written against `Host` (host.py) so the same code runs in process and inside a container."""
