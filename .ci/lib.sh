# Helpers shared by .ci/run and .ci/aarch64 (sourced, not run).

step() { echo "==> $(date +%H:%M:%S) $*"; }

# retry N CMD...: run CMD up to N times, waiting longer after each failure
retry() {
    local n=$1 i
    shift
    for ((i = 1; ; i++)); do
        "$@" && return 0
        if ((i >= n)); then
            echo "failed $n times: $*" >&2
            return 1
        fi
        echo "attempt $i of $n failed: $*; retrying in $((i * 20))s" >&2
        sleep $((i * 20))
    done
}
