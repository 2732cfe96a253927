# Helpers for scripts that start servers on loopback (bench/run.sh,
# scripts/soak.sh). Source it after defining `die MESSAGE`, which these call
# on failure.

free_ports() { # free_ports N: N distinct free loopback ports
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_http() { # wait_http URL PID NAME: until URL answers 2xx (20 s at most), while PID runs
    local _
    for _ in $(seq 1 200); do
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited during startup"
        sleep 0.1
    done
    die "$3 did not answer on $1"
}
