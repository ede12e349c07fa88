#!/bin/bash
# A small job for trying firecrest-ci without a cluster (the local backend),
# or as a first job on a real one. It prints a few lines, one of them with
# non-ASCII text, one on stderr, and writes an artifact.
set -euo pipefail

echo "Hello from $(hostname) — job ${SLURM_JOB_ID:-?}"
echo "Grüße, こんにちは, 👋"
echo "working directory: $PWD"
echo "a line on stderr" >&2

mkdir -p out
{
    echo "greeting: ${GREETING:-hello}"
    date -u +"written at %Y-%m-%dT%H:%M:%SZ"
} > out/greeting.txt
echo "wrote out/greeting.txt ($(wc -c < out/greeting.txt) bytes)"
