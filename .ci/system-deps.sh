#!/usr/bin/env bash
# Debian packages the slow multi-node tests need (tests/cluster): iproute2 for network
# namespaces, SLURM (slurmctld, slurmd, client tools) with munge, and PostgreSQL 15 for the
# shared Optuna study. Idempotent: when everything is there it only runs dpkg-query (well
# under a second). Needs root and apt; without them it says so and leaves the tests to skip.
set -euo pipefail

packages=(iproute2 util-linux munge slurmctld slurmd slurm-client postgresql-15)

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "system-deps: not root or no apt-get; missing ${missing[*]}: the cluster tests skip" >&2
    exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Package scripts must not start the daemons: the tests start their own, in temp folders.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap 'if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
