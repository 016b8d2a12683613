#!/usr/bin/env bash
# A test of a running lab from outside Python: the HTTP API with curl and jq.
#   maillab up topologies/home-dialup.yaml --ui -d
#   docs/ui/example.sh            (or: LAB=NAME docs/ui/example.sh)
set -euo pipefail
info=$(${MAILLAB:-maillab} ui ${LAB:+--lab "$LAB"} --json)
api=$(jq -r .api <<<"$info")
auth="X-Maillab-Token: $(jq -r .token <<<"$info")"
call() { curl -sS --fail-with-body -H "$auth" "$@"; }

# the dial-up link is down: the hub queues the message
id=$(call -X POST "$api/send" -d '{"from_node": "pc1", "mail_from": "eddy@shofar.org.uk",
  "to": ["paulmidgley@freeuk.com"], "subject": "from curl"}' | jq -r .queue_id)
call "$api/wait?until=queued&node=hub&to=paulmidgley@freeuk.com&timeout=10" >/dev/null
echo "queued on the hub: $id"

# raise the link: the hub flushes, the message reaches freeuk's mailbox
call -X POST "$api/links/dialup" -d '{"state": "up"}' >/dev/null
call "$api/wait?until=delivered&to=paulmidgley@freeuk.com&timeout=20" \
  | jq -e '.event.data.envelope_from == "eddy@shofar.uklinux.net"' >/dev/null
echo "delivered, envelope masqueraded"

# the hub heard pc1's MAIL FROM
call "$api/trace/$id" | jq -r '.hops[0].dialogue[] | select(.kind == "smtp.command")
  | "C: \(.data.command) \(.data.arg)"' | grep -qx 'C: MAIL FROM:<eddy@shofar.org.uk>'
echo "trace: the hub's dialogue has MAIL FROM:<eddy@shofar.org.uk>"
