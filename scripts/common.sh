# Shared by the benchmark scripts (sourced, not run): the binaries, free ports, readiness.

# Sets `bin` to the directory of the `load` and `proxy` binaries: BIN_DIR if set, else a
# release build of them.
find_binaries() {
    if [[ -n "${BIN_DIR:-}" ]]; then
        bin="$BIN_DIR"
    else
        cargo build --release --example load --example proxy
        bin=target/release/examples
    fi
}

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until something listens on 127.0.0.1:$1, for $2 tenths of a second at most (default
# 100: 10 s).
wait_port() {
    for _ in $(seq "${2:-100}"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}
