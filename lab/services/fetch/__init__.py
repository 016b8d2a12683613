"""The fetch service: fetchmail for the lab. It collects POP3 maildrops and hands every
message to the host's own MTA over SMTP, as fetchmail does to port 25.

For each job of the node (`fetch:` in the topology, one `poll` line of a .fetchmailrc):

1. resolve the server (a node name, or a name in the lab DNS) and connect to it over
   the host's network; STLS when the job says so; USER/PASS;
2. UIDL and LIST; every message whose UID is not in the job's journal is retrieved;
3. its recipients: single-drop, the job's `to` user; multidrop, the names found in the
   envelope headers (Delivered-To, X-Envelope-To: one per recipient, as the ISP writes
   them) or, when there are none, in To, Cc, Resent-To and Resent-Cc - only addresses in
   the job's `aka` domains or the server's own name count - mapped through the job's
   `multidrop` table (case-insensitive; an unlisted name goes to the job's postmaster);
4. a Received line for the POP3 hop is put on top (seed nelug's "with POP3 (fetchmail)"),
   the Return-Path is taken off and used as the envelope sender, and the message is
   submitted to the local MTA;
5. only when the local MTA said 250 is the UID written to the journal (fsync), and only
   then is the message deleted on the server (DELE, then QUIT) - or, with `keep`, left
   there and never fetched again. A local 4xx leaves the message on the server untouched
   for the next run; a 5xx leaves it too (fetchmail's softbounce).

The journal is STATE/fetch/USER@SERVER.uidl: one UID per line for a message handed over
whole, or "UID ADDRESS" for a recipient that already has it when others were deferred.
Because it is written before DELE, a run that dies between the local 250 and QUIT does
not deliver the message twice: the next run finds the UID, skips the delivery and
deletes it. After a clean QUIT the journal keeps only the UIDs still on the server.

Polling: every job's `poll` interval on the lab clock, while the host's links are up
(fetchmail's daemon mode, started from ip-up). `link_changed()` re-arms or stops it.
Events: fetch.start, fetch.message, fetch.deleted, fetch.kept, fetch.error, fetch.done.

The package: `service` (FetchService: polling, the POP3 session's steps, handing over),
`session` (PopSession, the POP3 client core over asyncio streams), `message` (reading and
rewriting a fetched message: envelope sender, multidrop names, the Received line) and
`journal` (UidJournal).
"""

from lab.services.fetch.journal import UidJournal
from lab.services.fetch.service import FetchService, JobResult, job_label
from lab.services.fetch.session import PopError, PopSession

__all__ = ["FetchService", "JobResult", "PopError", "PopSession", "UidJournal", "job_label"]
