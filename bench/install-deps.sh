#!/bin/sh
# Install the benchmark's outside programs when missing (Debian, as root).
# Postfix is wanted only for /usr/sbin/smtp-sink and smtp-source: its daemon
# must never start, so a policy-rc.d that refuses every start is in place
# for the install, and we check afterwards that no postfix master runs.
set -eu

need=""
[ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ] || need="$need postfix"
command -v msmtp >/dev/null 2>&1 || need="$need msmtp"
command -v emacs >/dev/null 2>&1 || need="$need emacs-nox"
[ -x /usr/bin/time ] || need="$need time"

if [ -z "$need" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: missing:$need (install them, or run make bench as root on Debian)" >&2
    echo "bench: scenarios that need them are reported as not run" >&2
    exit 0
fi

policy=/usr/sbin/policy-rc.d
created=""
if [ ! -e "$policy" ] || ! grep -q "exit 101" "$policy"; then
    [ -e "$policy" ] && cp -p "$policy" "$policy.bench-saved"
    printf '#!/bin/sh\n# smtpmail-bridge bench: never start daemons during install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created=yes
fi
restore() {
    if [ -n "$created" ]; then
        if [ -e "$policy.bench-saved" ]; then mv "$policy.bench-saved" "$policy"; else rm -f "$policy"; fi
    fi
}
trap restore EXIT

echo "bench: installing$need" >&2
apt-get update -q >&2
# postfix asks debconf questions: "No configuration" keeps it inert.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >&2

if pgrep -x master >/dev/null 2>&1; then
    echo "bench: a process named master is running after the install; stop it (postfix stop)" >&2
    exit 1
fi
