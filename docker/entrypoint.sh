#!/usr/bin/env bash
# PID 1 of the image. `docker stop` sends SIGTERM to PID 1 only, and a plain `accelerate launch` as
# PID 1 would neither pass it on (one-process runs) nor wait for the trainer to save. So the command
# runs in a process group of its own with TERM/INT ignored by the launcher, and the first TERM or INT
# is sent once to that whole group: the trainer catches it, saves a checkpoint and exits (75), and
# torchrun's agent, which installs its own handler, passes it to its workers. A second signal kills
# the group. Leave time to save: `docker stop -t 120`, or compose's stop_grace_period.
set -uo pipefail
if [[ $# -eq 0 ]]; then set -- accelerate launch -m resnet_lite.train; fi

set -m  # job control: the background command becomes the leader of a new process group
(trap '' TERM INT && exec "$@") &
child=$!
set +m

stopping=0
# shellcheck disable=SC2317  # called by the trap below
forward() {
    if [[ $stopping -eq 0 ]]; then
        stopping=1
        kill -TERM -- "-$child" 2>/dev/null
    else
        kill -KILL -- "-$child" 2>/dev/null
    fi
}
trap forward TERM INT

# A trapped signal interrupts `wait`; wait again until the command has really ended.
rc=0
wait "$child" || rc=$?
while kill -0 "$child" 2>/dev/null; do
    rc=0
    wait "$child" || rc=$?
done
exit "$rc"
