#!/usr/bin/env bash
# Installs the real mail peers that the tests and benchmarks talk to:
# swaks (SMTP client), Postfix (for smtp-source, smtp-sink and a private
# instance used as a baseline), Dovecot (IMAP and POP3, a private instance
# as the mailbox baseline), fetchmail (a POP3 and IMAP client), isync
# (mbsync) and getmail6 (IMAP clients for the IMAP server tests). Debian
# packages only; nothing here starts a system service: a policy-rc.d that
# refuses every start is put in place for the length of the install, so
# Postfix's package does not open port 25
# and Dovecot's does not open 110/143.
set -euo pipefail

# libnet-ssleay-perl: swaks needs it for TLS, and it is only a Recommends.
want=(swaks libnet-ssleay-perl postfix dovecot-imapd dovecot-pop3d fetchmail
      isync getmail6)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers: need root to apt-get install ${missing[*]}" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    made_policy=1
fi
trap '[ $made_policy -eq 1 ] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" \
    | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-peers: installed ${missing[*]}"
