# Shared by bench-ab.sh, bench-work.sh and storm-sweep.sh (sourced, not run).

# The loadtest arguments of the message-path scenarios both A/B scripts run.
scenario_args() {
    case $1 in
        p2p-16-q0) echo "p2p --clients 16 --qos 0" ;;
        p2p-16-q1) echo "p2p --clients 16 --qos 1" ;;
        fanin-32-q0) echo "fanin --clients 32 --qos 0" ;;
        fanout-100-q0) echo "fanout --clients 100 --publishers 1 --qos 0" ;;
        fanout-1000-q0) echo "fanout --clients 1000 --publishers 1 --qos 0" ;;
        *) echo "unknown scenario $1" >&2; exit 2 ;;
    esac
}

# wait_mqtt PORT NAME: waits until the broker on 127.0.0.1:PORT accepts TCP, then
# answers an MQTT round trip (a QoS 1 publish), as bench-peers.sh does: a load
# generator started within milliseconds of the first accept sometimes sees its
# connections reset (seen with every build here; see docs/BENCHMARKS.md). Returns 1,
# saying so, when it does not answer.
wait_mqtt() {
    local port=$1 name=$2
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
    timeout 10 mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -i "probe-$port" -t probe/ready -m probe && return 0
    echo "$(basename "$0"): $name does not answer MQTT on $port" >&2
    return 1
}
