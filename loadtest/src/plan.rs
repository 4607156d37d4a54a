//! Which clients a scenario opens, what each one does, and which thread runs it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// N publisher→subscriber pairs, one topic each.
    P2p,
    /// N publishers, each on its own topic, to wildcard subscribers (one by default).
    Fanin,
    /// P publishers (one by default) to N subscribers of one topic.
    Fanout,
    /// N idle connections, held for the duration.
    Conns,
    /// A reconnect storm: N clients connect at once, each subscribes to its own
    /// topic and gets one QoS 1 message it publishes there; held for the duration.
    Storm,
    /// p2p at a fixed total rate.
    Latency,
    /// P publishers (two by default) to one shared-subscription group
    /// (`$share/...`) of N subscribers: each message to one member.
    Shared,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::P2p => "p2p",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Conns => "conns",
            Scenario::Storm => "storm",
            Scenario::Latency => "latency",
            Scenario::Shared => "shared",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Role {
    Publisher {
        index: u32,
        topic: String,
    },
    Subscriber {
        index: u32,
        filter: String,
        /// The publishers this subscriber hears are `first_publisher..+publishers`.
        first_publisher: u32,
        publishers: u32,
    },
    Idle,
    /// A storm's client: its own topic, and (`message`) one QoS 1 message through it.
    /// Without the message: a `conns --subscribe` connection, idle once subscribed.
    Storm {
        topic: String,
        message: bool,
    },
}

impl Role {
    /// Publishers and subscribers reconnect when the broker drops them mid-run.
    pub fn is_active(&self) -> bool {
        !matches!(self, Role::Idle | Role::Storm { .. })
    }
}

impl Scenario {
    /// Connection scenarios: the set-up is what is measured, then the connections
    /// are held (connect rate, memory per connection).
    pub fn holds_connections(self) -> bool {
        matches!(self, Scenario::Conns | Scenario::Storm)
    }
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub client_id: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: Vec<ClientSpec>,
    pub publishers: usize,
    pub subscribers: usize,
    /// Deliveries each publish should make.
    pub fanout: u64,
}

/// Builds the clients for `scenario`. `n` is the scenario's `--clients`;
/// `publishers`/`subscribers` override the secondary counts where they apply.
pub fn build(
    scenario: Scenario,
    n: usize,
    publishers: Option<usize>,
    subscribers: Option<usize>,
    topic_prefix: &str,
    id_prefix: &str,
) -> Result<Plan, String> {
    if n == 0 {
        return Err("--clients must be at least 1".into());
    }
    let publisher = |i: usize, topic: String| ClientSpec {
        client_id: format!("{id_prefix}p{i}"),
        role: Role::Publisher {
            index: i as u32,
            topic,
        },
    };
    let subscriber = |i: usize, filter: String, first: usize, count: usize| ClientSpec {
        client_id: format!("{id_prefix}s{i}"),
        role: Role::Subscriber {
            index: i as u32,
            filter,
            first_publisher: first as u32,
            publishers: count as u32,
        },
    };
    let mut clients = Vec::new();
    let (pubs, subs, fanout) = match scenario {
        Scenario::P2p | Scenario::Latency => {
            if publishers.is_some_and(|p| p != n) || subscribers.is_some_and(|s| s != n) {
                return Err(
                    "p2p and latency have one publisher and one subscriber per pair".into(),
                );
            }
            for i in 0..n {
                let topic = format!("{topic_prefix}/p2p/{i}");
                clients.push(subscriber(i, topic.clone(), i, 1));
                clients.push(publisher(i, topic));
            }
            (n, n, 1)
        }
        Scenario::Fanin => {
            if publishers.is_some_and(|p| p != n) {
                return Err("fanin's publishers are --clients".into());
            }
            let subs = subscribers.unwrap_or(1).max(1);
            for i in 0..subs {
                clients.push(subscriber(i, format!("{topic_prefix}/in/+"), 0, n));
            }
            for i in 0..n {
                clients.push(publisher(i, format!("{topic_prefix}/in/{i}")));
            }
            (n, subs, subs as u64)
        }
        Scenario::Fanout => {
            if subscribers.is_some_and(|s| s != n) {
                return Err("fanout's subscribers are --clients".into());
            }
            let pubs = publishers.unwrap_or(1).max(1);
            let topic = format!("{topic_prefix}/out");
            for i in 0..n {
                clients.push(subscriber(i, topic.clone(), 0, pubs));
            }
            for i in 0..pubs {
                clients.push(publisher(i, topic.clone()));
            }
            (pubs, n, n as u64)
        }
        Scenario::Shared => {
            if subscribers.is_some_and(|s| s != n) {
                return Err("shared's subscribers (the group's members) are --clients".into());
            }
            let pubs = publishers.unwrap_or(2).max(1);
            let topic = format!("{topic_prefix}/shared");
            for i in 0..n {
                clients.push(subscriber(i, format!("$share/lt/{topic}"), 0, pubs));
            }
            for i in 0..pubs {
                clients.push(publisher(i, topic.clone()));
            }
            // One delivery per publish, to the group.
            (pubs, n, 1)
        }
        Scenario::Conns => {
            for i in 0..n {
                clients.push(ClientSpec {
                    client_id: format!("{id_prefix}c{i}"),
                    role: Role::Idle,
                });
            }
            (0, 0, 0)
        }
        Scenario::Storm => {
            for i in 0..n {
                // Named after the client, so a resumed session's subscription is to
                // the same topic on the next run (the client id prefix is the run's).
                let client_id = format!("{id_prefix}s{i}");
                clients.push(ClientSpec {
                    role: Role::Storm {
                        topic: format!("storm/{client_id}"),
                        message: true,
                    },
                    client_id,
                });
            }
            (0, 0, 0)
        }
    };
    Ok(Plan {
        clients,
        publishers: pubs,
        subscribers: subs,
        fanout,
    })
}

/// Deals clients to `threads` threads, each role round-robin on its own, so every
/// thread has a similar mix of publishers and subscribers.
pub fn deal(clients: Vec<ClientSpec>, threads: usize) -> Vec<Vec<ClientSpec>> {
    let mut out = vec![Vec::new(); threads.max(1)];
    let len = out.len();
    let mut next = [0usize; 3];
    for c in clients {
        let k = match c.role {
            Role::Publisher { .. } => 0,
            Role::Subscriber { .. } => 1,
            Role::Idle | Role::Storm { .. } => 2,
        };
        out[next[k] % len].push(c);
        next[k] += 1;
    }
    out
}

/// Parses `--sub-brokers`: comma-separated HOST:PORT addresses (at least one).
pub fn parse_brokers(list: &str) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("--sub-brokers {list}: an empty address"));
        }
        let a = part
            .to_socket_addrs()
            .map_err(|e| format!("--sub-brokers {part}: {e}"))?
            .next()
            .ok_or_else(|| format!("--sub-brokers {part}: no address"))?;
        out.push(a);
    }
    Ok(out)
}

/// The broker a client connects to: subscriber k goes to `sub_brokers[k % len]`
/// (round-robin) when there are any; everything else goes to `broker`.
pub fn broker_for(
    role: &Role,
    broker: std::net::SocketAddr,
    sub_brokers: &[std::net::SocketAddr],
) -> std::net::SocketAddr {
    match role {
        Role::Subscriber { index, .. } if !sub_brokers.is_empty() => {
            sub_brokers[*index as usize % sub_brokers.len()]
        }
        _ => broker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(plan: &Plan) -> (usize, usize) {
        let p = plan
            .clients
            .iter()
            .filter(|c| matches!(c.role, Role::Publisher { .. }))
            .count();
        let s = plan
            .clients
            .iter()
            .filter(|c| matches!(c.role, Role::Subscriber { .. }))
            .count();
        (p, s)
    }

    #[test]
    fn shapes() {
        let p = build(Scenario::P2p, 16, None, None, "t", "x").unwrap();
        assert_eq!((count(&p), p.fanout), ((16, 16), 1));
        let p = build(Scenario::Fanin, 32, None, None, "t", "x").unwrap();
        assert_eq!((count(&p), p.fanout), ((32, 1), 1));
        let p = build(Scenario::Fanout, 100, Some(2), None, "t", "x").unwrap();
        assert_eq!((count(&p), p.fanout), ((2, 100), 100));
        let p = build(Scenario::Shared, 8, None, None, "t", "x").unwrap();
        assert_eq!((count(&p), p.fanout), ((2, 8), 1));
        assert!(p.clients.iter().any(|c| matches!(&c.role,
            Role::Subscriber { filter, .. } if filter == "$share/lt/t/shared")));
        let p = build(Scenario::Conns, 5, None, None, "t", "x").unwrap();
        assert_eq!((count(&p), p.clients.len()), ((0, 0), 5));
        // A storm's clients each have a topic of their own, named after the client
        // (so that the next run with the same ids resumes the same subscriptions).
        let p = build(Scenario::Storm, 3, None, None, "t", "x-").unwrap();
        assert_eq!((count(&p), p.clients.len()), ((0, 0), 3));
        for c in &p.clients {
            assert!(
                matches!(&c.role, Role::Storm { topic, message: true } if *topic == format!("storm/{}", c.client_id))
            );
        }
        assert!(build(Scenario::P2p, 0, None, None, "t", "x").is_err());
    }

    #[test]
    fn client_ids_are_unique_and_short() {
        let p = build(Scenario::Fanout, 1000, Some(3), None, "t", "lt1a2b3c-").unwrap();
        let mut ids: Vec<_> = p.clients.iter().map(|c| c.client_id.clone()).collect();
        assert!(ids.iter().all(|id| id.len() <= 23));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1003);
    }

    #[test]
    fn dealing_spreads_both_roles() {
        let p = build(Scenario::P2p, 4, None, None, "t", "x").unwrap();
        let dealt = deal(p.clients, 2);
        for t in &dealt {
            assert_eq!(
                count(&Plan {
                    clients: t.clone(),
                    publishers: 0,
                    subscribers: 0,
                    fanout: 0
                }),
                (2, 2)
            );
        }
    }

    #[test]
    fn sub_brokers_parse_and_spread_round_robin() {
        let b = parse_brokers("127.0.0.1:1001, 127.0.0.1:1002,127.0.0.1:1003").unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[1].port(), 1002);
        assert!(parse_brokers("127.0.0.1:1001,").is_err());
        assert!(parse_brokers("nonsense").is_err());
        let root: std::net::SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let plan = build(Scenario::Fanout, 9, Some(1), None, "t", "id-").unwrap();
        let mut per = std::collections::HashMap::new();
        for c in &plan.clients {
            let a = broker_for(&c.role, root, &b);
            match c.role {
                Role::Publisher { .. } => assert_eq!(a, root),
                Role::Subscriber { .. } => *per.entry(a.port()).or_insert(0) += 1,
                Role::Idle | Role::Storm { .. } => unreachable!(),
            }
        }
        assert_eq!(per.len(), 3);
        assert!(per.values().all(|&n| n == 3), "{per:?}");
        // Without sub-brokers everyone goes to --broker.
        for c in &plan.clients {
            assert_eq!(broker_for(&c.role, root, &[]), root);
        }
    }
}
