#!/bin/sh
# Leaves a grandchild that ignores SIGTERM and prints both pids.
# With "stubborn" the script survives SIGTERM (it only reports it), and another grandchild
# reports the SIGTERM it gets, then exits.
if [ "$1" = stubborn ]; then
    trap 'echo "got TERM"' TERM
    (trap 'echo "sibling got TERM"; exit 0' TERM; sleep 30 & wait) &
    echo "sibling $!"
fi
(trap '' TERM; exec sleep 30) &
echo "main $$"
echo "grandchild $!"
while kill -0 "$!" 2>/dev/null; do
    wait
done
