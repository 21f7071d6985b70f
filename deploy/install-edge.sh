#!/usr/bin/env bash
# Install an isthmus edge node under a prefix: virtualenv, package, config, certificate, systemd unit.
# Safe to run twice: an existing config and certificate are kept unless --force. See --help.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: install-edge.sh --model PATH [options]

Creates PREFIX/venv, installs isthmus with its "edge" extra, writes PREFIX/etc/edge.toml and a
self-signed certificate (unless --cert/--key are given), and installs the systemd unit
isthmus-edge.service. Running it again upgrades the package and keeps the existing config and
certificate (use --force to rewrite them).

Layout:
  PREFIX/venv/                 the virtualenv (PREFIX/venv/bin/isthmus is the command)
  PREFIX/etc/edge.toml         the configuration (see deploy/edge.example.toml for every key)
  PREFIX/etc/edge.crt, .key    the self-signed certificate and key (key mode 0600)
  PREFIX/etc/center-tls/       with --center-tls-dir: ca.crt, client.crt, client.key for mutual
                               TLS to the center
  PREFIX/etc/isthmus-edge.service   the rendered systemd unit (also installed, see below)

Where and what to install:
  --prefix DIR            Install prefix. Default /opt/isthmus-edge.
  --source PATH|SPEC      What to install: a source folder (default: the repository this script
                          is in), a wheel or sdist file, or a pip requirement spec given as is
                          (name the extra yourself, e.g. 'isthmus[edge]==0.1.0').
  --python PY             Python (>= 3.11) used to create the virtualenv. Default python3.
  --venv-args "ARGS"      Extra arguments for "python -m venv", e.g. "--system-site-packages".
  --pip-args "ARGS"       Extra arguments for "pip install", e.g. "--no-index --find-links DIR"
                          for offline hosts, or "--no-deps" when the dependencies are already
                          there (a pre-installed CUDA torch, see --site-packages).
  --site-packages DIR     Make packages installed under DIR importable in the virtualenv (via a
                          .pth file), e.g. a CUDA build of torch installed system-wide.
                          Repeatable.

Configuration (used only when the config is written: first run, or with --force):
  --model PATH            Hugging Face checkpoint folder of the edge model. Required then.
  --center HOST:PORT      A center replica's gRPC endpoint. Repeatable. None: edge only.
  --center-tls-dir DIR    Mutual TLS to the center with the files that
                          "launch-center.sh --tls-dir" made: DIR/ca.crt and the client pair
                          DIR/NAME.crt, DIR/NAME.key (NAME from --center-client, default edge).
                          They are copied to PREFIX/etc/center-tls/ (refreshed on every run).
                          Needed when a center is beyond loopback.
  --center-client NAME    Which client certificate in --center-tls-dir. Default edge.
  --port N                QUIC (UDP) port apps connect to. Default 4433.
  --http-port N           HTTP port for /metrics, /healthz, /readyz and the OpenAI API.
                          Default 9090.
  --api-key-hash H[:NAME[:MAX]]
                          sha256 hex digest of an API key (printf %s KEY | sha256sum), with an
                          optional name and max concurrent requests. Repeatable. None: the edge
                          admits anonymous requests.
  --quantization Q        none, nf4 or int8. Default nf4.
  --device D              cpu, cuda or cuda:N. Default cuda if nvidia-smi works, else cpu.
  --cert FILE --key FILE  Use this certificate and key instead of a self-signed pair.
  --hostname NAME         Name or IP address the self-signed certificate is valid for.
                          Repeatable. Default: localhost, 127.0.0.1, ::1 and this host's name.

Service:
  --user USER             User the service runs as. Default: the user running this script.
  --no-systemd            Do not install the unit; print how to start the node instead (also
                          what happens when systemd is not running).
  --unit-dir DIR          Where to install the unit. Default /etc/systemd/system.
  --no-start              Install and enable the unit but do not (re)start it.

Other:
  --force                 Rewrite the config and the certificate even if they exist.
  -h, --help              Show this help.

Start by hand:  PREFIX/venv/bin/isthmus edge --config PREFIX/etc/edge.toml
EOF
}

die() { echo "install-edge: $*" >&2; exit 1; }
say() { echo "install-edge: $*"; }

PREFIX=/opt/isthmus-edge
SOURCE="$REPO_DIR"
PYTHON=python3
VENV_ARGS=""
PIP_ARGS=""
SITE_DIRS=()
MODEL=""
CENTERS=()
CENTER_TLS_DIR=""
CENTER_CLIENT=edge
PORT=4433
HTTP_PORT=9090
KEY_HASHES=()
QUANT=""
DEVICE=""
CERT=""
KEY=""
HOSTNAMES=()
SVC_USER="$(id -un)"
SYSTEMD=1
UNIT_DIR=/etc/systemd/system
START=1
FORCE=0

need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) need "$@"; PREFIX="$2"; shift 2 ;;
        --source) need "$@"; SOURCE="$2"; shift 2 ;;
        --python) need "$@"; PYTHON="$2"; shift 2 ;;
        --venv-args) need "$@"; VENV_ARGS="$2"; shift 2 ;;
        --pip-args) need "$@"; PIP_ARGS="$2"; shift 2 ;;
        --site-packages) need "$@"; SITE_DIRS+=("$2"); shift 2 ;;
        --model) need "$@"; MODEL="$2"; shift 2 ;;
        --center) need "$@"; CENTERS+=("$2"); shift 2 ;;
        --center-tls-dir) need "$@"; CENTER_TLS_DIR="$2"; shift 2 ;;
        --center-client) need "$@"; CENTER_CLIENT="$2"; shift 2 ;;
        --port) need "$@"; PORT="$2"; shift 2 ;;
        --http-port) need "$@"; HTTP_PORT="$2"; shift 2 ;;
        --api-key-hash) need "$@"; KEY_HASHES+=("$2"); shift 2 ;;
        --quantization) need "$@"; QUANT="$2"; shift 2 ;;
        --device) need "$@"; DEVICE="$2"; shift 2 ;;
        --cert) need "$@"; CERT="$2"; shift 2 ;;
        --key) need "$@"; KEY="$2"; shift 2 ;;
        --hostname) need "$@"; HOSTNAMES+=("$2"); shift 2 ;;
        --user) need "$@"; SVC_USER="$2"; shift 2 ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --unit-dir) need "$@"; UNIT_DIR="$2"; shift 2 ;;
        --no-start) START=0; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

# --- check inputs before touching anything ---------------------------------------------------
[[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]] || die "--port: expected 1-65535, got '$PORT'"
[[ "$HTTP_PORT" =~ ^[0-9]+$ && "$HTTP_PORT" -le 65535 ]] || die "--http-port: expected 0-65535, got '$HTTP_PORT'"
if [[ -n "$CERT" && -z "$KEY" || -z "$CERT" && -n "$KEY" ]]; then die "--cert and --key go together"; fi
if [[ -n "$CERT" ]]; then
    [[ -r "$CERT" ]] || die "--cert: cannot read $CERT"
    [[ -r "$KEY" ]] || die "--key: cannot read $KEY"
fi
for d in "${SITE_DIRS[@]}"; do [[ -d "$d" ]] || die "--site-packages: no such folder $d"; done
if [[ -n "$CENTER_TLS_DIR" ]]; then
    for f in ca.crt "$CENTER_CLIENT.crt" "$CENTER_CLIENT.key"; do
        [[ -r "$CENTER_TLS_DIR/$f" ]] || die "--center-tls-dir: cannot read $CENTER_TLS_DIR/$f (copy ca.crt, $CENTER_CLIENT.crt and $CENTER_CLIENT.key from the center's --tls-dir)"
    done
fi
for c in "${CENTERS[@]}"; do
    h="${c%:*}"
    if [[ -z "$CENTER_TLS_DIR" && ! "$h" =~ ^(127\.[0-9.]+|localhost|\[::1\])$ ]]; then
        echo "install-edge: warning: center $c is beyond loopback but no --center-tls-dir was given;" \
             "a center there serves mutual TLS only (unless it was started with --insecure)" >&2
    fi
done
command -v "$PYTHON" >/dev/null 2>&1 || die "--python: $PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "--python: $PYTHON is older than 3.11"

mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
VENV="$PREFIX/venv"
ETC="$PREFIX/etc"
CONFIG="$ETC/edge.toml"

if [[ -f "$CONFIG" && $FORCE -eq 0 ]]; then
    WRITE_CONFIG=0
else
    WRITE_CONFIG=1
    [[ -n "$MODEL" ]] || die "--model is required to write $CONFIG"
fi

if [[ -z "$DEVICE" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then DEVICE=cuda; else DEVICE=cpu; fi
fi
if [[ -z "$QUANT" ]]; then QUANT=nf4; fi  # the edge serves a quantized model (bitsandbytes runs on CPU too)

# --- virtualenv and package ------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    # shellcheck disable=SC2086  # VENV_ARGS is a list of words on purpose
    "$PYTHON" -m venv $VENV_ARGS "$VENV"
else
    say "reusing $VENV"
fi

if [[ ${#SITE_DIRS[@]} -gt 0 ]]; then
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "${SITE_DIRS[@]}" > "$SITE/isthmus_extra_site.pth"
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ -d "$SOURCE" ]]; then
    [[ -f "$SOURCE/pyproject.toml" ]] || die "--source: $SOURCE has no pyproject.toml"
    # Build from a clean copy of only what the package needs, so the source tree (maybe a shared
    # checkout) gets no build/ or egg-info folders and no stray files end up in the wheel.
    mapfile -t PARTS < <("$PYTHON" - "$SOURCE/pyproject.toml" <<'PY'
import sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
print("pyproject.toml")
print(cfg["project"].get("readme", "README.md"))
for folder in cfg["tool"]["setuptools"]["package-dir"].values():
    print(folder)
PY
)
    mkdir -p "$TMP/src"
    for part in "${PARTS[@]}"; do
        if [[ -e "$SOURCE/$part" ]]; then cp -R "$SOURCE/$part" "$TMP/src/"; fi
    done
    find "$TMP/src" -name __pycache__ -type d -prune -exec rm -rf {} +
    TARGET="$TMP/src[edge]"
elif [[ -f "$SOURCE" ]]; then
    TARGET="$SOURCE[edge]"
else
    TARGET="$SOURCE"
fi

say "installing $SOURCE into $VENV"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet $PIP_ARGS "$TARGET"
"$VENV/bin/python" -c 'import isthmus.edge.config, isthmus.edge.tls' || die "the installed package does not import"

# --- certificate and config ------------------------------------------------------------------
mkdir -p "$ETC"
if [[ -z "$CERT" ]]; then
    CERT="$ETC/edge.crt"
    KEY="$ETC/edge.key"
    if [[ ${#HOSTNAMES[@]} -eq 0 ]]; then
        HOSTNAMES=(localhost 127.0.0.1 ::1)
        h="$(hostname 2>/dev/null || true)"
        if [[ -n "$h" && "$h" != localhost ]]; then HOSTNAMES+=("$h"); fi
    fi
    TLS_ARGS=(--cert "$CERT" --key "$KEY")
    for h in "${HOSTNAMES[@]}"; do TLS_ARGS+=(--host "$h"); done
    if [[ $FORCE -eq 1 ]]; then TLS_ARGS+=(--force); fi
    "$VENV/bin/python" -m isthmus.edge.tls "${TLS_ARGS[@]}"
else
    CERT="$(cd "$(dirname "$CERT")" && pwd)/$(basename "$CERT")"
    KEY="$(cd "$(dirname "$KEY")" && pwd)/$(basename "$KEY")"
fi

CENTER_TLS_ARGS=()
if [[ -n "$CENTER_TLS_DIR" ]]; then
    CTLS="$ETC/center-tls"
    mkdir -p "$CTLS"
    cp "$CENTER_TLS_DIR/ca.crt" "$CTLS/ca.crt"
    cp "$CENTER_TLS_DIR/$CENTER_CLIENT.crt" "$CTLS/client.crt"
    install -m 600 "$CENTER_TLS_DIR/$CENTER_CLIENT.key" "$CTLS/client.key"
    CENTER_TLS_ARGS=(--center-tls "$CTLS/ca.crt" "$CTLS/client.crt" "$CTLS/client.key")
    say "mutual TLS to the center: $CTLS (client certificate $CENTER_CLIENT)"
fi

if [[ $WRITE_CONFIG -eq 1 ]]; then
    CFG_ARGS=(write --out "$CONFIG" --model "$MODEL" --port "$PORT" --http-port "$HTTP_PORT"
              --cert "$CERT" --key "$KEY" --quantization "$QUANT" --device "$DEVICE" --force
              "${CENTER_TLS_ARGS[@]}")
    for c in "${CENTERS[@]}"; do CFG_ARGS+=(--center "$c"); done
    for k in "${KEY_HASHES[@]}"; do CFG_ARGS+=(--api-key-hash "$k"); done
    "$VENV/bin/python" -m isthmus.edge.config "${CFG_ARGS[@]}"
else
    say "keeping existing $CONFIG (use --force to rewrite it)"
fi
"$VENV/bin/python" -m isthmus.edge.config check "$CONFIG"

# --- service ---------------------------------------------------------------------------------
UNIT_TEMPLATE="$SCRIPT_DIR/isthmus-edge.service"
[[ -f "$UNIT_TEMPLATE" ]] || die "missing $UNIT_TEMPLATE (keep install-edge.sh beside it)"
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@USER@|$SVC_USER|g" -e "s|@CONFIG@|$CONFIG|g" \
    "$UNIT_TEMPLATE" > "$ETC/isthmus-edge.service"

START_CMD="$VENV/bin/isthmus edge --config $CONFIG"
if [[ $SYSTEMD -eq 1 && -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    mkdir -p "$UNIT_DIR"
    cp "$ETC/isthmus-edge.service" "$UNIT_DIR/isthmus-edge.service"
    systemctl daemon-reload
    systemctl enable isthmus-edge.service
    if [[ $START -eq 1 ]]; then
        systemctl restart isthmus-edge.service
        say "started isthmus-edge.service (journalctl -u isthmus-edge -f)"
    else
        say "installed and enabled isthmus-edge.service (start: systemctl start isthmus-edge)"
    fi
else
    if [[ $SYSTEMD -eq 1 ]]; then say "systemd is not running here: not installing the unit"; fi
    say "the unit file is at $ETC/isthmus-edge.service"
    say "start the edge node with:"
    echo "    $START_CMD"
fi
say "done: config $CONFIG, certificate $CERT"
