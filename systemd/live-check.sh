#!/usr/bin/env bash
# Run the shipped units under a real systemd and check what they promise.
#
#   sudo systemd/live-check.sh            # ~5 min the first time, ~2 min with the root cached
#
# Boots Debian 12 (debootstrap, cached in $GW_LIVE_ROOT) in systemd-nspawn on the host's
# network, installs this checkout into /opt/gatewayd with pip, runs Redis inside and the
# SMSC simulator outside, and checks: Type=notify start and status line, delivery, the
# watchdog through Redis being down, reload, kill -9, a stop during a drain (nothing
# lost), a config error (exit 2, no restart loop), systemd-analyze security, and the
# template unit beside the main one in either order. Prints "ok: ..." per check; exits
# non-zero at the first failure. Needs root, the Debian mirror and PyPI; not part of
# `make test` (too slow, and it needs the network).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
ROOT=${GW_LIVE_ROOT:-/var/lib/machines/gatewayd-live}
MACHINE=gatewayd-live
REDIS_PORT=${GW_LIVE_REDIS_PORT:-6391}
HTTP_PORT=${GW_LIVE_HTTP_PORT:-8791}
PY=${PYTHON:-$SRC/.venv/bin/python}
N_DRAIN=${GW_LIVE_DRAIN:-20000}

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, systemd-nspawn)"
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    systemd-container debootstrap >/dev/null
fi
[ -x "$PY" ] || fail "no $PY: run 'make .venv/.installed' first (the simulator runs from it)"

if [ ! -x "$ROOT/usr/lib/systemd/systemd" ]; then
  echo "debootstrap: Debian 12 into $ROOT"
  mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-venv,redis-server,ca-certificates,procps \
    bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
fi
# The host's CA bundle: where PyPI is reached through a TLS-inspecting proxy, pip in the
# container must trust what the host trusts.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
rm -rf "$ROOT/src" && mkdir "$ROOT/src"
git -C "$SRC" archive HEAD | tar -x -C "$ROOT/src"
echo "pip: installing this checkout ($(git -C "$SRC" rev-parse --short HEAD)) into /opt/gatewayd"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  /usr/sbin/chroot "$ROOT" /bin/sh -c \
  "{ [ -x /opt/gatewayd/bin/pip ] || python3 -m venv /opt/gatewayd; } &&
   /opt/gatewayd/bin/pip install -q --force-reinstall --no-deps /src &&
   /opt/gatewayd/bin/pip install -q /src &&
   ln -sf /opt/gatewayd/bin/gatewayd /usr/local/bin/gatewayd"

SIM_PORT=$("$PY" -c 'from gatewayd.embedded import free_port; print(free_port())')
mkdir -p "$ROOT/etc/gatewayd"
rm -rf "$ROOT/etc/gatewayd/policies" && cp -r "$SRC/policies" "$ROOT/etc/gatewayd/policies"
cat > "$ROOT/etc/gatewayd/gatewayd.toml" <<EOF
[daemon]
log_level = "info"
[redis]
url = "redis://127.0.0.1:$REDIS_PORT/0"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[policy]
file = "/etc/gatewayd/policies/demo.toml"
[[carrier]]
mo_country_code = "86"
name = "sim"
host = "127.0.0.1"
port = $SIM_PORT
system_id = "demo"
password_env = "SIM_SMPP_PASSWORD"
window = 100
tps = 2000
source_addr = "10690001"
EOF
sed -e "s/127.0.0.1:$HTTP_PORT/127.0.0.1:$((HTTP_PORT + 1))/" \
  "$ROOT/etc/gatewayd/gatewayd.toml" > "$ROOT/etc/gatewayd/second.toml"
printf 'SIM_SMPP_PASSWORD=demo\n' > "$ROOT/etc/gatewayd/gatewayd.env"
chmod 600 "$ROOT/etc/gatewayd/gatewayd.env"
sed -i "s/^port .*/port $REDIS_PORT/" "$ROOT/etc/redis/redis.conf"
cp "$SRC/systemd/gatewayd.service" "$SRC/systemd/gatewayd@.service" "$ROOT/etc/systemd/system/"
ln -sf /etc/systemd/system/gatewayd.service \
  "$ROOT/etc/systemd/system/multi-user.target.wants/gatewayd.service"
rm -rf "$ROOT/var/lib/gatewayd" "$ROOT/var/lib/gatewayd-second" "$ROOT/var/lib/private/gatewayd"*
echo "$MACHINE" > "$ROOT/etc/hostname"

"$PY" -m gatewayd.sim --port "$SIM_PORT" --log-level WARNING >/tmp/gatewayd-live-sim.log 2>&1 &
SIM_PID=$!
# No systemd on the host: no machined to register with, no unit to move into.
systemd-nspawn -b -D "$ROOT" --machine "$MACHINE" --register=no --keep-unit \
  >/tmp/gatewayd-live-boot.log 2>&1 &
NSPAWN_PID=$!
cleanup() {
  kill "$NSPAWN_PID" 2>/dev/null || true
  kill "$SIM_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

INIT=""
for _ in $(seq 1 100); do
  INIT=$(pgrep -P "$NSPAWN_PID" | head -1 || true)
  [ -n "$INIT" ] && break
  sleep 0.1
done
[ -n "$INIT" ] || fail "the container did not start (see /tmp/gatewayd-live-boot.log)"
in_ct() {
  nsenter -t "$INIT" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SIM_SMPP_PASSWORD=demo "$@"
}
prop() { in_ct systemctl show "$1" -p "$2" --value; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local until=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || fail "$what"
    sleep 0.5
  done
}
is_active() { [ "$(prop "$1" ActiveState)" = active ]; }
states() {  # the states of ids PREFIX-0 .. PREFIX-(N-1), counted, as JSON
  in_ct /opt/gatewayd/bin/python - "$1" "$2" "$REDIS_PORT" <<'EOF'
import collections, json, sys
import redis
prefix, n, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
p = r.pipeline(transaction=False)
for i in range(n):
    p.hget(f"gw:msg:{{{prefix}-{i}}}", "state")
print(json.dumps(collections.Counter(str(s) for s in p.execute()), sort_keys=True))
EOF
}
all_delivered() { [ "$(states "$1" "$2")" = "{\"delivered\": $2}" ]; }
status_has_bind() { prop gatewayd StatusText | grep -q 'binds up 1'; }
journal_has() { in_ct journalctl -u gatewayd -o cat | grep -q "$1"; }
restarted_since() { [ "$(prop gatewayd NRestarts)" -gt "$1" ]; }
readyz_is() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/readyz")" = "$1" ]
}
enqueue() {  # enqueue PREFIX N
  "$PY" -c "
import json, sys
for i in range(int(sys.argv[2])):
    print(json.dumps({'id': f'{sys.argv[1]}-{i}', 'to': f'+86139{i:08d}',
                      'text': f'【京东】您的订单{i}已发货，请注意查收。', 'category': 'transactional'}))
" "$1" "$2" > "$ROOT/root/$1.jsonl"
  in_ct gatewayd enqueue -c /etc/gatewayd/gatewayd.toml --file "/root/$1.jsonl" >/dev/null
}

wait_for 90 "gatewayd.service never became active" is_active gatewayd
wait_for 20 "no bind up in the status line" status_has_bind
ok "Type=notify start: $(prop gatewayd StatusText)"

enqueue live 200
wait_for 30 "200 messages not delivered" all_delivered live 200
ok "200 messages delivered through the unit"

in_ct systemctl reload gatewayd
wait_for 10 "no 'policies reloaded' after systemctl reload" journal_has "policies reloaded"
ok "systemctl reload: policies reloaded"

before=$(prop gatewayd NRestarts)
in_ct systemctl kill -s KILL gatewayd
wait_for 30 "not restarted after kill -9" restarted_since "$before"
wait_for 30 "not active after its restart" is_active gatewayd
ok "kill -9: restarted by systemd (NRestarts $before -> $(prop gatewayd NRestarts))"

in_ct systemctl stop redis-server
sleep 40  # past WatchdogSec=30s: the watchdog must keep being fed while Redis is away
is_active gatewayd || fail "gatewayd not active after 40 s without Redis (watchdog?)"
readyz_is 503 || fail "/readyz did not answer 503 with Redis down"
in_ct systemctl start redis-server
wait_for 30 "/readyz not 200 after Redis came back" readyz_is 200
ok "40 s without Redis: still active (watchdog fed), /readyz 503 then 200"

in_ct systemctl stop gatewayd
enqueue drain "$N_DRAIN"
in_ct systemctl start gatewayd
sleep 2
in_ct systemctl stop gatewayd
[ "$(prop gatewayd Result)" = success ] || fail "stop during a drain: Result=$(prop gatewayd Result)"
[ "$(prop gatewayd ExecMainStatus)" = 0 ] || fail "stop: exit $(prop gatewayd ExecMainStatus)"
mid=$(states drain "$N_DRAIN")
echo "$mid" | grep -q '"None"' && fail "messages without a record after the stop: $mid"
ok "stop during a $N_DRAIN-message drain: exit 0, every message recorded: $mid"
in_ct systemctl start gatewayd
wait_for 300 "not every drained message delivered after the restart" \
  all_delivered drain "$N_DRAIN"
ok "after the restart: all $N_DRAIN delivered"

cp "$ROOT/etc/gatewayd/gatewayd.toml" "$ROOT/etc/gatewayd/gatewayd.toml.good"
sed -i 's/^window = 100/window = -5/' "$ROOT/etc/gatewayd/gatewayd.toml"
in_ct systemctl restart gatewayd 2>/dev/null || true
sleep 6
[ "$(prop gatewayd ExecMainStatus)" = 2 ] || fail "config error: exit $(prop gatewayd ExecMainStatus)"
[ "$(prop gatewayd ActiveState)" = failed ] || fail "config error: $(prop gatewayd ActiveState)"
journal_has 'carrier\[0\].window: must be at least 1' \
  || fail "config error: the journal does not name the key"
mv "$ROOT/etc/gatewayd/gatewayd.toml.good" "$ROOT/etc/gatewayd/gatewayd.toml"
ok "config error: exit 2, the key named in the journal, no restart loop"
in_ct systemctl reset-failed gatewayd

score=$(in_ct systemd-analyze security gatewayd --no-pager | sed -n 's/.*exposure level for gatewayd.service: \([0-9.]*\).*/\1/p')
awk "BEGIN { exit !($score <= 2.0) }" || fail "systemd-analyze security: $score"
ok "systemd-analyze security: $score"

in_ct systemctl start gatewayd
in_ct systemctl start gatewayd@second
wait_for 20 "gatewayd@second not active beside gatewayd" is_active gatewayd@second
is_active gatewayd || fail "gatewayd not active beside gatewayd@second"
in_ct systemctl stop gatewayd gatewayd@second
in_ct systemctl start gatewayd@second
in_ct systemctl start gatewayd
wait_for 20 "gatewayd not active beside gatewayd@second (started second)" is_active gatewayd
is_active gatewayd@second || fail "gatewayd@second not active (started first)"
ok "gatewayd@second and gatewayd side by side, in either order"
in_ct systemctl stop gatewayd gatewayd@second
echo "all checks passed"
