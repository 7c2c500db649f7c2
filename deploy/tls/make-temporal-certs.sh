#!/bin/sh
# Certificates for Temporal's frontend behind mutual TLS: a CA, the server's certificate and one client
# certificate per component that may talk to Temporal. Nothing else gets one — in particular no operator:
# operators act through patchflow's REST API with a token (PATCHFLOW_API_URL, PATCHFLOW_TOKEN).
#
#   deploy/tls/make-temporal-certs.sh OUTDIR [--days N] [--san NAME]... [--client NAME]...
#
# OUTDIR/ca/ca.crt, ca.key         the CA (ca.key: 0600, mounted nowhere; keep it offline if you can)
# OUTDIR/temporal/                 the Temporal server: frontend and internode certificate (server and client
#                                  auth: Temporal's own system worker presents it to the frontend)
# OUTDIR/patchflow-api/            patchflow's API, which also serves Slack's callbacks (the Slack handler)
# OUTDIR/patchflow-worker/         patchflow's workers
# OUTDIR/temporal-ui/              the Temporal Web UI (deploy/ runs it read-only)
# OUTDIR/temporal-admin/           the one-shot job that creates the Temporal namespace
# OUTDIR/<NAME>/                   each --client NAME (e.g. a second worker pool for another AWS account)
#
# Every component directory holds tls.crt, tls.key and ca.crt (the names of a kubernetes.io/tls Secret and of
# cert-manager's), so a directory is what one container mounts, or one Secret holds:
#   kubectl -n patchflow create secret generic patchflow-temporal-api-tls --from-file=OUTDIR/patchflow-api/
#
# OUTDIR is 0700: other users of this host cannot read it. The keys inside component directories are 0644
# because each container runs as its own user (patchflow 10001, Temporal's images 1000) and sees only its
# own directory — isolation is by mount, not by file mode.
#
# Run it again to renew: the CA is kept (OUTDIR/ca), every other certificate is issued anew; restart the
# services to load them. Delete OUTDIR/ca to start a new CA (every component then needs its new files).
# The server certificate names temporal (compose), the Kubernetes frontend Service of the temporalio Helm
# chart (temporal-frontend.temporal.svc.cluster.local and its shorter forms), localhost and 127.0.0.1;
# --san adds DNS names or IP addresses. Keys are ECDSA P-256; leaves are valid for --days (default 365).
set -eu

usage() {
    echo "usage: $0 OUTDIR [--days N] [--san NAME]... [--client NAME]..." >&2
    exit 2
}

[ $# -ge 1 ] || usage
out=$1
shift
days=365
extra_sans=""
clients="patchflow-api patchflow-worker temporal-ui temporal-admin"
while [ $# -gt 0 ]; do
    case $1 in
        --days) [ $# -ge 2 ] || usage; days=$2; shift 2 ;;
        --san) [ $# -ge 2 ] || usage; extra_sans="$extra_sans $2"; shift 2 ;;
        --client) [ $# -ge 2 ] || usage; clients="$clients $2"; shift 2 ;;
        *) usage ;;
    esac
done
case $days in '' | *[!0-9]*) echo "$0: --days wants a number of days, not '$days'" >&2; exit 2 ;; esac
for name in $clients; do
    case $name in
        temporal | ca | '' | *[!A-Za-z0-9._-]* | .*)
            echo "$0: '$name' cannot be a client name (letters, digits, '.', '_', '-'; not ca or temporal)" >&2
            exit 2 ;;
    esac
done
command -v openssl >/dev/null || { echo "$0: openssl is not installed" >&2; exit 1; }

umask 077
mkdir -p "$out"
chmod 0700 "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# OpenSSL's default configuration adds extensions of its own: every certificate here gets exactly these.
cat >"$work/req.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
EOF

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

serial() {
    echo "0x$(openssl rand -hex 16)"
}

if [ ! -f "$out/ca/ca.key" ]; then
    mkdir -p "$out/ca"
    new_key "$out/ca/ca.key"
    cat >"$work/ca.ext" <<'EOF'
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl req -new -key "$out/ca/ca.key" -subj "/O=patchflow/CN=patchflow Temporal CA" \
        -config "$work/req.cnf" -out "$work/ca.csr"
    openssl x509 -req -in "$work/ca.csr" -signkey "$out/ca/ca.key" -sha256 -days 3650 \
        -set_serial "$(serial)" -extfile "$work/ca.ext" -out "$out/ca/ca.crt" 2>/dev/null
    echo "new CA: $out/ca/ca.crt" >&2
fi
chmod 0600 "$out/ca/ca.key"
chmod 0644 "$out/ca/ca.crt"

# issue NAME EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
issue() {
    dir="$out/$1"
    mkdir -p "$dir"
    chmod 0755 "$dir"
    new_key "$dir/tls.key"
    {
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = $2"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid"
        if [ -n "${3:-}" ]; then echo "subjectAltName = $3"; fi
    } >"$work/$1.ext"
    openssl req -new -key "$dir/tls.key" -subj "/O=patchflow/CN=$1" -config "$work/req.cnf" \
        -out "$work/$1.csr"
    openssl x509 -req -in "$work/$1.csr" -CA "$out/ca/ca.crt" -CAkey "$out/ca/ca.key" -sha256 \
        -days "$days" -set_serial "$(serial)" -extfile "$work/$1.ext" -out "$dir/tls.crt" 2>/dev/null
    cp "$out/ca/ca.crt" "$dir/ca.crt"
    chmod 0644 "$dir/tls.crt" "$dir/tls.key" "$dir/ca.crt"
    echo "issued $dir/tls.crt" >&2
}

sans="DNS:temporal,DNS:temporal-frontend,DNS:temporal-frontend.temporal,DNS:temporal-frontend.temporal.svc"
sans="$sans,DNS:temporal-frontend.temporal.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
for san in $extra_sans; do
    case $san in
        *[!0-9.]*) case $san in *:*) sans="$sans,IP:$san" ;; *) sans="$sans,DNS:$san" ;; esac ;;
        *) sans="$sans,IP:$san" ;;
    esac
done
issue temporal "serverAuth, clientAuth" "$sans"
for name in $clients; do
    issue "$name" clientAuth
done
