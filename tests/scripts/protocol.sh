#!/bin/sh
# Speaks the stdout progress protocol, valid and malformed, mixed with plain output.
echo "::progress::10"
echo "::progress::42.5 halfway there"
printf '::progress::50\r\n'
echo "::progress::150"
echo "::progress::-5 below zero"
echo "::counts::total=50 success=46 failed=2 skipped=2"
echo "::counts::success=47"
echo '::result::{"rows": 3}'
echo '::result::["last", 1]'
echo "plain line"
echo "::progress::99 on stderr" >&2
echo ""
