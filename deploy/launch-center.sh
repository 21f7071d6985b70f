#!/usr/bin/env bash
# Launch one node of an isthmus center replica (tensor-parallel model behind gRPC).
#
# Run the same command on every node of the replica, changing only --node-rank. Global rank 0
# (on node rank 0) runs the scheduler and serves gRPC; every rank holds one shard of the model.
# See --help for every option. Inputs are checked before anything starts. Secure by default: gRPC
# and the rendezvous listen on loopback unless told otherwise, and beyond loopback gRPC needs
# mutual TLS (--tls-dir makes the certificates) or an explicit --insecure.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: launch-center.sh --model PATH [options]

Starts this node's share of a center replica with torchrun (python -m isthmus.center.rendezvous:
torchrun whose rendezvous store listens only on the --rdzv address). Tensor-parallel size =
--nproc-per-node x --nnodes. Node rank 0 hosts the rendezvous and serves gRPC on --port; other
nodes only run model shards.

Model and parallelism:
  --model PATH            Hugging Face checkpoint folder (config.json, *.safetensors,
                          tokenizer.json). Required.
  --tp-size N             Tensor-parallel size. Default: nproc-per-node x nnodes. When given
                          without --nproc-per-node, nproc-per-node = N / nnodes.
  --nproc-per-node N      Ranks (GPUs) on this node. Default 1 (or tp-size / nnodes).
  --nnodes N              Number of nodes in this replica. Default 1.
  --node-rank R           This node's rank, 0 .. nnodes-1. Default 0.
  --rdzv ADDR:PORT        Rendezvous address: node rank 0's address and a free TCP port. The
                          store listens on exactly this address. Default 127.0.0.1:29500.
  --device cpu|cuda       cuda: one GPU per rank, NCCL; cpu: gloo (tests, demos). Default cuda.
  --dtype DTYPE           auto | float32 | bfloat16 | float16. Default auto.
  --num-kv-blocks N       KV cache blocks per rank (default: sized from free memory).
  --max-num-seqs N        Running requests at most (default: engine default).
  --collective-timeout-s S
                          Any collective slower than this fails the group (a dead rank brings
                          the replica down instead of hanging it). Default 60.

Serving (node rank 0):
  --host HOST             gRPC bind address. Default 127.0.0.1 (loopback). Any other address
                          needs mutual TLS (--tls-dir, or --tls-cert/--tls-key/--tls-client-ca)
                          or --insecure.
  --port N                gRPC port. Default 50051.
  --tls-dir DIR           Mutual TLS with the certificates in DIR, made on first use: ca.crt/.key,
                          center.crt/.key (valid for --host, localhost, this host's name and
                          every --tls-host) and edge.crt/.key for the edges (copy ca.crt, edge.crt
                          and edge.key to each edge: install-edge.sh --center-tls-dir).
  --tls-host NAME         Another name or address the center certificate is valid for
                          (repeatable; used when --tls-dir makes it).
  --tls-cert FILE         Server certificate (PEM). Without it the center serves plaintext.
  --tls-key FILE          Server private key (PEM). Required with --tls-cert.
  --tls-client-ca FILE    CA bundle (PEM) for client certificates: turns on mutual TLS.
  --insecure              Allow a non-loopback --host without mutual TLS (not recommended).
  --admin-token-file FILE Token that admin calls (Drain) must send as metadata
                          "authorization: Bearer TOKEN"; made (random, mode 0600) if missing.
                          With mutual TLS, a verified client certificate also may.
  --admin-cn CN           With mutual TLS, only client certificates with this common name may
                          make admin calls (repeatable). Default: any verified certificate.
  --audit-log PATH        Append one JSON line per admin call (Drain, migrate, Export,
                          FetchWeights), per refused admin call and per signal drain to PATH
                          ("-": stdout, for the journal). Never tokens or prompts. Default: none.
  --audit-max-bytes N     Rotate the audit log past N bytes (PATH.1, PATH.2, ...). Default 10 MiB.
  --audit-backups N       Rotated audit logs kept. Default 5.
  --grace-s S             Drain grace period on SIGTERM: in-flight requests get this long to
                          finish. Default 30.
  --drain-migrate         On SIGTERM, drain with migrate instead: every in-flight request ends
                          at once with its state and the edge continues it on another replica
                          (the edge answers DRAINING only when no other replica can take it).
  --migrate-kv MODE       How a migrating request moves: tokens (the target recomputes its KV
                          cache), kv (its KV blocks go too), auto (kv from --migrate-kv-min-tokens
                          of context on). Default auto. Not under tensor parallelism: TP > 1
                          replicas migrate by tokens.
  --migrate-kv-min-tokens N
                          auto: ship the KV from N context tokens on. Default 256.
  --migrate-kv-ticket-mib N
                          KV too large for the migration message waits here, up to N MiB in all,
                          until the target replica fetches it directly (FetchKV, an admin call);
                          over that, or 0, the request migrates by tokens. Default 4096.
  --migrate-kv-ticket-ttl-s S
                          Drop such KV if nobody fetched it within S seconds. Default 30.
  --migrate-kv-fetch-timeout-s S
                          As target: give up a fetch after S seconds plus 1 s per 128 MiB and
                          recompute instead. Default 5.
  --advertise HOST:PORT   Address other replicas fetch KV from (default --host:--port, this
                          host's name for 0.0.0.0); with TLS, one the certificate is valid for
                          (--tls-host).
  --peer-tls-cert FILE    Client certificate this replica presents to fetch KV from another
  --peer-tls-key FILE     (mutual TLS). --tls-dir makes and uses center-peer.crt/.key; with
                          --admin-cn, list center-peer too. Replicas sharing one
                          --admin-token-file also authenticate with the token.

Restarts:
  --restart N             Start the replica again, up to N times, when it fails (exit status
                          other than 0; a drain or a stop signal is not a failure). Default 0.
                          deploy/isthmus-center.service does the same under systemd.
  --restart-delay S       Seconds to wait before each restart. Default 5.

Other:
  --python PATH           Python interpreter with isthmus installed. Default: the repository's
                          .venv/bin/python when present, else python3.
  --dry-run               Check inputs (and make missing --tls-dir certificates and the admin
                          token) and print the torchrun command without running it.
  -h, --help              This help.

Example (two nodes, 8 GPUs each, TP=16):
  node0$ deploy/launch-center.sh --model /models/deepseek-llm-67b-chat --nnodes 2 \
           --nproc-per-node 8 --node-rank 0 --rdzv 10.0.0.1:29500 --port 50051 \
           --host 10.0.0.1 --tls-dir /etc/isthmus/tls --admin-token-file /etc/isthmus/admin.token
  node1$ deploy/launch-center.sh --model /models/deepseek-llm-67b-chat --nnodes 2 \
           --nproc-per-node 8 --node-rank 1 --rdzv 10.0.0.1:29500
EOF
}

die() {
    echo "launch-center: error: $*" >&2
    exit 2
}

MODEL="" TP_SIZE="" NPROC="" NNODES=1 NODE_RANK=0 RDZV="127.0.0.1:29500" DEVICE=cuda DTYPE=auto
NUM_KV_BLOCKS="" MAX_NUM_SEQS="" COLL_TIMEOUT=60 HOST=127.0.0.1 PORT=50051 TLS_CERT="" TLS_KEY=""
TLS_CLIENT_CA="" GRACE_S=30 PYTHON="" DRY_RUN=0 TLS_DIR="" INSECURE=0 ADMIN_TOKEN_FILE="" RESTARTS=0
RESTART_DELAY=5 DRAIN_MIGRATE=0 AUDIT_LOG="" AUDIT_MAX_BYTES="" AUDIT_BACKUPS=""
MIGRATE_KV="" KV_MIN_TOKENS="" KV_TICKET_MIB="" KV_TICKET_TTL="" KV_FETCH_TIMEOUT="" ADVERTISE=""
PEER_TLS_CERT="" PEER_TLS_KEY=""
TLS_HOSTS=() ADMIN_CNS=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --model) need_value "$@"; MODEL="$2"; shift 2 ;;
        --tp-size) need_value "$@"; TP_SIZE="$2"; shift 2 ;;
        --nproc-per-node) need_value "$@"; NPROC="$2"; shift 2 ;;
        --nnodes) need_value "$@"; NNODES="$2"; shift 2 ;;
        --node-rank) need_value "$@"; NODE_RANK="$2"; shift 2 ;;
        --rdzv) need_value "$@"; RDZV="$2"; shift 2 ;;
        --device) need_value "$@"; DEVICE="$2"; shift 2 ;;
        --dtype) need_value "$@"; DTYPE="$2"; shift 2 ;;
        --num-kv-blocks) need_value "$@"; NUM_KV_BLOCKS="$2"; shift 2 ;;
        --max-num-seqs) need_value "$@"; MAX_NUM_SEQS="$2"; shift 2 ;;
        --collective-timeout-s) need_value "$@"; COLL_TIMEOUT="$2"; shift 2 ;;
        --host) need_value "$@"; HOST="$2"; shift 2 ;;
        --port) need_value "$@"; PORT="$2"; shift 2 ;;
        --tls-cert) need_value "$@"; TLS_CERT="$2"; shift 2 ;;
        --tls-key) need_value "$@"; TLS_KEY="$2"; shift 2 ;;
        --tls-client-ca) need_value "$@"; TLS_CLIENT_CA="$2"; shift 2 ;;
        --tls-dir) need_value "$@"; TLS_DIR="$2"; shift 2 ;;
        --tls-host) need_value "$@"; TLS_HOSTS+=("$2"); shift 2 ;;
        --insecure) INSECURE=1; shift ;;
        --admin-token-file) need_value "$@"; ADMIN_TOKEN_FILE="$2"; shift 2 ;;
        --admin-cn) need_value "$@"; ADMIN_CNS+=("$2"); shift 2 ;;
        --restart) need_value "$@"; RESTARTS="$2"; shift 2 ;;
        --restart-delay) need_value "$@"; RESTART_DELAY="$2"; shift 2 ;;
        --grace-s) need_value "$@"; GRACE_S="$2"; shift 2 ;;
        --drain-migrate) DRAIN_MIGRATE=1; shift ;;
        --migrate-kv) need_value "$@"; MIGRATE_KV="$2"; shift 2 ;;
        --migrate-kv-min-tokens) need_value "$@"; KV_MIN_TOKENS="$2"; shift 2 ;;
        --migrate-kv-ticket-mib) need_value "$@"; KV_TICKET_MIB="$2"; shift 2 ;;
        --migrate-kv-ticket-ttl-s) need_value "$@"; KV_TICKET_TTL="$2"; shift 2 ;;
        --migrate-kv-fetch-timeout-s) need_value "$@"; KV_FETCH_TIMEOUT="$2"; shift 2 ;;
        --advertise) need_value "$@"; ADVERTISE="$2"; shift 2 ;;
        --peer-tls-cert) need_value "$@"; PEER_TLS_CERT="$2"; shift 2 ;;
        --peer-tls-key) need_value "$@"; PEER_TLS_KEY="$2"; shift 2 ;;
        --audit-log) need_value "$@"; AUDIT_LOG="$2"; shift 2 ;;
        --audit-max-bytes) need_value "$@"; AUDIT_MAX_BYTES="$2"; shift 2 ;;
        --audit-backups) need_value "$@"; AUDIT_BACKUPS="$2"; shift 2 ;;
        --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_pos_int() { is_uint "$1" && (( 10#$1 >= 1 )); }
is_number() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; }

# --- plain value checks -------------------------------------------------------------------------
[[ -n "$MODEL" ]] || die "--model is required (a Hugging Face checkpoint folder)"
[[ -d "$MODEL" ]] || die "--model: '$MODEL' is not a directory"
[[ -f "$MODEL/config.json" ]] || die "--model: '$MODEL' has no config.json"
compgen -G "$MODEL/*.safetensors" >/dev/null || die "--model: '$MODEL' has no *.safetensors weights"
is_pos_int "$NNODES" || die "--nnodes must be a positive integer, got '$NNODES'"
is_uint "$NODE_RANK" || die "--node-rank must be a non-negative integer, got '$NODE_RANK'"
(( NODE_RANK < NNODES )) || die "--node-rank $NODE_RANK must be below --nnodes $NNODES"
if [[ -n "$TP_SIZE" ]]; then
    is_pos_int "$TP_SIZE" || die "--tp-size must be a positive integer, got '$TP_SIZE'"
    if [[ -z "$NPROC" ]]; then
        (( TP_SIZE % NNODES == 0 )) || die "--tp-size $TP_SIZE is not a multiple of --nnodes $NNODES"
        NPROC=$(( TP_SIZE / NNODES ))
    fi
fi
NPROC="${NPROC:-1}"
is_pos_int "$NPROC" || die "--nproc-per-node must be a positive integer, got '$NPROC'"
WORLD=$(( NPROC * NNODES ))
if [[ -n "$TP_SIZE" && "$TP_SIZE" -ne "$WORLD" ]]; then
    die "--tp-size $TP_SIZE != --nproc-per-node $NPROC x --nnodes $NNODES"
fi
[[ "$RDZV" =~ ^([^:]+):([0-9]+)$ ]] || die "--rdzv must be ADDR:PORT, got '$RDZV'"
RDZV_ADDR="${BASH_REMATCH[1]}" RDZV_PORT="${BASH_REMATCH[2]}"
(( RDZV_PORT >= 1 && RDZV_PORT <= 65535 )) || die "--rdzv port must be 1..65535, got $RDZV_PORT"
[[ "$DEVICE" == cpu || "$DEVICE" == cuda ]] || die "--device must be 'cpu' or 'cuda', got '$DEVICE'"
case "$DTYPE" in auto|float32|bfloat16|float16) ;; *) die "--dtype must be auto|float32|bfloat16|float16, got '$DTYPE'" ;; esac
[[ -z "$NUM_KV_BLOCKS" ]] || is_pos_int "$NUM_KV_BLOCKS" || die "--num-kv-blocks must be a positive integer"
[[ -z "$MAX_NUM_SEQS" ]] || is_pos_int "$MAX_NUM_SEQS" || die "--max-num-seqs must be a positive integer"
is_number "$COLL_TIMEOUT" || die "--collective-timeout-s must be a positive number of seconds"
is_number "$GRACE_S" || die "--grace-s must be a non-negative number of seconds"
is_uint "$PORT" && (( PORT >= 1 && PORT <= 65535 )) || die "--port must be 1..65535, got '$PORT'"
[[ -z "$AUDIT_MAX_BYTES" ]] || is_pos_int "$AUDIT_MAX_BYTES" || die "--audit-max-bytes must be a positive integer"
[[ -z "$AUDIT_BACKUPS" ]] || is_uint "$AUDIT_BACKUPS" || die "--audit-backups must be a non-negative integer"
case "$MIGRATE_KV" in ""|auto|tokens|kv) ;; *) die "--migrate-kv must be auto|tokens|kv, got '$MIGRATE_KV'" ;; esac
[[ -z "$KV_MIN_TOKENS" ]] || is_pos_int "$KV_MIN_TOKENS" || die "--migrate-kv-min-tokens must be a positive integer"
[[ -z "$KV_TICKET_MIB" ]] || is_uint "$KV_TICKET_MIB" || die "--migrate-kv-ticket-mib must be a non-negative integer"
[[ -z "$KV_TICKET_TTL" ]] || is_number "$KV_TICKET_TTL" || die "--migrate-kv-ticket-ttl-s must be a positive number of seconds"
[[ -z "$KV_FETCH_TIMEOUT" ]] || is_number "$KV_FETCH_TIMEOUT" || die "--migrate-kv-fetch-timeout-s must be a positive number of seconds"
[[ -z "$ADVERTISE" || "$ADVERTISE" =~ ^.+:[0-9]+$ ]] || die "--advertise must be HOST:PORT, got '$ADVERTISE'"
if [[ -n "$PEER_TLS_CERT$PEER_TLS_KEY" ]]; then
    [[ -n "$PEER_TLS_CERT" && -n "$PEER_TLS_KEY" ]] || die "--peer-tls-cert and --peer-tls-key go together"
    [[ -r "$PEER_TLS_CERT" ]] || die "--peer-tls-cert: cannot read '$PEER_TLS_CERT'"
    [[ -r "$PEER_TLS_KEY" ]] || die "--peer-tls-key: cannot read '$PEER_TLS_KEY'"
    [[ -n "$TLS_CERT$TLS_DIR" ]] || die "--peer-tls-cert needs TLS (--tls-dir or --tls-cert/--tls-key)"
fi
is_uint "$RESTARTS" || die "--restart must be a non-negative integer, got '$RESTARTS'"
is_number "$RESTART_DELAY" || die "--restart-delay must be a non-negative number of seconds"
if [[ -n "$TLS_DIR" ]]; then
    [[ -z "$TLS_CERT$TLS_KEY$TLS_CLIENT_CA" ]] || die "--tls-dir replaces --tls-cert/--tls-key/--tls-client-ca: give one or the other"
    (( NODE_RANK == 0 )) || die "--tls-dir is for node rank 0 (the node that serves gRPC)"
fi
if [[ -n "$TLS_CERT" || -n "$TLS_KEY" ]]; then
    [[ -n "$TLS_CERT" && -n "$TLS_KEY" ]] || die "--tls-cert and --tls-key go together"
    [[ -r "$TLS_CERT" ]] || die "--tls-cert: cannot read '$TLS_CERT'"
    [[ -r "$TLS_KEY" ]] || die "--tls-key: cannot read '$TLS_KEY'"
fi
if [[ -n "$TLS_CLIENT_CA" ]]; then
    [[ -n "$TLS_CERT" ]] || die "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key"
    [[ -r "$TLS_CLIENT_CA" ]] || die "--tls-client-ca: cannot read '$TLS_CLIENT_CA'"
fi
is_loopback_host() { [[ "$1" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ || "$1" == "::1" || "$1" == "[::1]" || "$1" == localhost ]]; }
if (( NODE_RANK == 0 )) && ! is_loopback_host "$HOST" && [[ -z "$TLS_CLIENT_CA$TLS_DIR" ]] && (( ! INSECURE )); then
    die "--host $HOST listens beyond loopback, so the center needs mutual TLS there: give --tls-dir DIR (made on first use) or --tls-cert, --tls-key and --tls-client-ca; or --insecure to serve without it"
fi
(( ${#ADMIN_CNS[@]} == 0 )) || [[ -n "$TLS_CLIENT_CA$TLS_DIR" ]] || die "--admin-cn needs mutual TLS (--tls-dir or --tls-client-ca)"

if [[ -z "$PYTHON" ]]; then
    if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || die "--python: '$PYTHON' not found"

# --- certificates and the admin token (node rank 0 serves, so only it needs them) ----------------
if [[ -n "$TLS_DIR" ]]; then
    CERT_HOSTS=(--host localhost --host 127.0.0.1 --host ::1)
    h="$(hostname 2>/dev/null || true)"
    [[ -z "$h" || "$h" == localhost ]] || CERT_HOSTS+=(--host "$h")
    [[ "$HOST" == 0.0.0.0 || "$HOST" == "::" ]] || is_loopback_host "$HOST" || CERT_HOSTS+=(--host "$HOST")
    for h in "${TLS_HOSTS[@]}"; do CERT_HOSTS+=(--host "$h"); done
    "$PYTHON" -m isthmus.edge.tls --mutual-tls-dir "$TLS_DIR" "${CERT_HOSTS[@]}" \
        --client edge --client center-peer >&2 \
        || die "--tls-dir: could not make certificates in '$TLS_DIR' (the cryptography package is needed: pip install cryptography)"
    TLS_CERT="$TLS_DIR/center.crt" TLS_KEY="$TLS_DIR/center.key" TLS_CLIENT_CA="$TLS_DIR/ca.crt"
    if [[ -z "$PEER_TLS_CERT" ]]; then  # the certificate this replica fetches migrated KV with
        PEER_TLS_CERT="$TLS_DIR/center-peer.crt" PEER_TLS_KEY="$TLS_DIR/center-peer.key"
    fi
fi
if [[ -n "$ADMIN_TOKEN_FILE" ]] && (( NODE_RANK == 0 )); then
    "$PYTHON" -c 'import sys; from isthmus.center.auth import write_admin_token as w; w(sys.argv[1])' \
        "$ADMIN_TOKEN_FILE" || die "--admin-token-file: see the error above"
fi

# --- checks that need Python: the model's shape, free ports, GPUs --------------------------------
CHECK_ROLE=worker
(( NODE_RANK == 0 )) && CHECK_ROLE=server
"$PYTHON" - "$MODEL" "$WORLD" "$CHECK_ROLE" "$HOST" "$PORT" "$RDZV_ADDR" "$RDZV_PORT" "$DEVICE" "$NPROC" <<'PY' || exit 2
import json, socket, sys
model, world, role, host, port, rdzv_addr, rdzv_port, device, nproc = sys.argv[1:]
world, port, rdzv_port, nproc = int(world), int(port), int(rdzv_port), int(nproc)

def die(msg):
    print(f"launch-center: error: {msg}", file=sys.stderr)
    sys.exit(2)

try:
    with open(f"{model}/config.json") as f:
        cfg = json.load(f)
except (OSError, ValueError) as exc:
    die(f"--model: cannot read {model}/config.json: {exc}")
heads = cfg.get("num_attention_heads")
if not isinstance(heads, int) or heads < 1:
    die(f"--model: config.json has no valid num_attention_heads")
kv_heads = cfg.get("num_key_value_heads") or heads
inter = cfg.get("intermediate_size")
if heads % world:
    die(f"TP size {world} does not divide the model's {heads} attention heads")
if kv_heads >= world and kv_heads % world:
    die(f"TP size {world} does not divide the model's {kv_heads} key/value heads")
if kv_heads < world and world % kv_heads:
    die(f"TP size {world} is not a multiple of the model's {kv_heads} key/value heads")
if isinstance(inter, int) and inter % world:
    die(f"TP size {world} does not divide the model's intermediate_size {inter}")

def check_free(h, p, flag):
    with socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((h, p))
        except OSError as exc:
            die(f"{flag}: port {p} on {h} is not free ({exc.strerror})")

if role == "server":  # node rank 0 hosts the rendezvous store and serves gRPC
    check_free(host, port, "--port")
    check_free(rdzv_addr, rdzv_port, "--rdzv")
if device == "cuda":
    import torch
    n = torch.cuda.device_count()
    if n < nproc:
        die(f"--device cuda: {nproc} ranks on this node but only {n} CUDA device(s) visible")
PY

# isthmus.center.rendezvous is torchrun with a static rendezvous whose store listens only on
# RDZV_ADDR (torchrun's own binds every interface).
CMD=("$PYTHON" -m isthmus.center.rendezvous
    --nnodes "$NNODES" --nproc-per-node "$NPROC"
    --rdzv-backend isthmus-static --rdzv-endpoint "$RDZV_ADDR:$RDZV_PORT" --rdzv-conf "rank=$NODE_RANK"
    --max-restarts 0
    # torchrun forwards SIGTERM to the ranks and waits this long before SIGKILL: the grace
    # period plus a margin, so a draining rank 0 finishes its in-flight requests.
    --shutdown-timeout "$(( ${GRACE_S%.*} + 30 ))"
    -m isthmus.center.main
    --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --port "$PORT"
    --grace-s "$GRACE_S" --collective-timeout-s "$COLL_TIMEOUT")
[[ -n "$NUM_KV_BLOCKS" ]] && CMD+=(--num-kv-blocks "$NUM_KV_BLOCKS")
[[ -n "$MAX_NUM_SEQS" ]] && CMD+=(--max-num-seqs "$MAX_NUM_SEQS")
if (( NODE_RANK == 0 )); then  # serving options; the other nodes' ranks never serve
    CMD+=(--host "$HOST")
    [[ -n "$TLS_CERT" ]] && CMD+=(--tls-cert "$TLS_CERT" --tls-key "$TLS_KEY")
    [[ -n "$TLS_CLIENT_CA" ]] && CMD+=(--tls-client-ca "$TLS_CLIENT_CA")
    (( INSECURE )) && CMD+=(--insecure)
    (( DRAIN_MIGRATE )) && CMD+=(--drain-migrate)
    [[ -n "$MIGRATE_KV" ]] && CMD+=(--migrate-kv "$MIGRATE_KV")
    [[ -n "$KV_MIN_TOKENS" ]] && CMD+=(--migrate-kv-min-tokens "$KV_MIN_TOKENS")
    [[ -n "$KV_TICKET_MIB" ]] && CMD+=(--migrate-kv-ticket-mib "$KV_TICKET_MIB")
    [[ -n "$KV_TICKET_TTL" ]] && CMD+=(--migrate-kv-ticket-ttl-s "$KV_TICKET_TTL")
    [[ -n "$KV_FETCH_TIMEOUT" ]] && CMD+=(--migrate-kv-fetch-timeout-s "$KV_FETCH_TIMEOUT")
    [[ -n "$ADVERTISE" ]] && CMD+=(--advertise "$ADVERTISE")
    [[ -n "$PEER_TLS_CERT" ]] && CMD+=(--peer-tls-cert "$PEER_TLS_CERT" --peer-tls-key "$PEER_TLS_KEY")
    [[ -n "$ADMIN_TOKEN_FILE" ]] && CMD+=(--admin-token-file "$ADMIN_TOKEN_FILE")
    for cn in "${ADMIN_CNS[@]}"; do CMD+=(--admin-cn "$cn"); done
    [[ -n "$AUDIT_LOG" ]] && CMD+=(--audit-log "$AUDIT_LOG")
    [[ -n "$AUDIT_MAX_BYTES" ]] && CMD+=(--audit-max-bytes "$AUDIT_MAX_BYTES")
    [[ -n "$AUDIT_BACKUPS" ]] && CMD+=(--audit-backups "$AUDIT_BACKUPS")
fi

echo "launch-center: node $NODE_RANK/$NNODES, $NPROC rank(s) here, TP size $WORLD, device $DEVICE" >&2
if (( DRY_RUN )); then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
if [[ "$DEVICE" == cpu ]]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
# torchrun's agent treats SIGTERM as a failure of the job (exit status 1). For a graceful drain
# the signal goes to the ranks instead: rank 0 drains, stops the followers and exits 0; followers
# ignore it and leave on rank 0's stop message; torchrun then exits 0 on its own.
STOPPING=0 TORCHRUN_PID=""
forward_to_ranks() {
    STOPPING=1
    echo "launch-center: draining (signal forwarded to the ranks)" >&2
    [[ -z "$TORCHRUN_PID" ]] || pkill -TERM -P "$TORCHRUN_PID" 2>/dev/null || true
}
trap forward_to_ranks TERM INT
set +e
num_restarts=0
while true; do
    echo "launch-center: starting the replica ($(date -u +%Y-%m-%dT%H:%M:%SZ))" >&2
    "${CMD[@]}" &
    TORCHRUN_PID=$!
    wait "$TORCHRUN_PID"
    rc=$?
    while kill -0 "$TORCHRUN_PID" 2>/dev/null; do
        wait "$TORCHRUN_PID"
        rc=$?
    done
    TORCHRUN_PID=""
    # a drain (0), a stop signal or bad arguments (2) end it; a failure is restarted if asked
    if (( rc == 0 || rc == 2 || STOPPING || num_restarts >= RESTARTS )); then
        exit "$rc"
    fi
    num_restarts=$(( num_restarts + 1 ))
    echo "launch-center: the replica failed (exit status $rc); restart $num_restarts of $RESTARTS in ${RESTART_DELAY}s" >&2
    sleep "$RESTART_DELAY" &
    wait $! || true  # a stop signal interrupts the wait
    (( STOPPING )) && exit "$rc"
done
