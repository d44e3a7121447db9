//! Open connections of one listener, capped in all and per peer address.
//!
//! Every listener of the platform (the router's plain and TLS listeners, the
//! node's and the admin API's) admits a new connection only while it holds
//! fewer than its caps; past them the connection is refused at once. The
//! count is given back when the connection's [`ConnectionSlot`] is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A listener's connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Open connections in all.
    pub total: usize,
    /// Open connections from one peer address.
    pub per_peer: usize,
}

impl Default for ConnectionCaps {
    fn default() -> Self {
        ConnectionCaps {
            total: crate::limits::MAX_CONNECTIONS,
            per_peer: crate::limits::MAX_CONNECTIONS_PER_PEER,
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// The open connections of one listener.
#[derive(Clone)]
pub struct Connections {
    caps: ConnectionCaps,
    open: Arc<Mutex<Open>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its cap of connections in all.
    Total,
    /// The peer address holds its cap of connections.
    PerPeer,
}

impl Connections {
    pub fn new(caps: ConnectionCaps) -> Self {
        Connections {
            caps,
            open: Arc::default(),
        }
    }

    /// A place for a new connection from `peer`, or why there is none.
    pub fn admit(&self, peer: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_peer = open.per_peer.get(&peer).copied().unwrap_or(0);
        if open.total >= self.caps.total {
            return Err(Refused::Total);
        }
        if from_peer >= self.caps.per_peer {
            return Err(Refused::PerPeer);
        }
        open.total += 1;
        open.per_peer.insert(peer, from_peer + 1);
        Ok(ConnectionSlot {
            open: self.open.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// A connection's place, given back when dropped.
pub struct ConnectionSlot {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn caps_hold_per_peer_and_in_all_and_slots_come_back() {
        let connections = Connections::new(ConnectionCaps {
            total: 3,
            per_peer: 2,
        });
        let a1 = connections.admit(ip(1)).unwrap();
        let _a2 = connections.admit(ip(1)).unwrap();
        assert_eq!(connections.admit(ip(1)).err(), Some(Refused::PerPeer));
        let _b1 = connections.admit(ip(2)).unwrap();
        assert_eq!(connections.admit(ip(3)).err(), Some(Refused::Total));
        assert_eq!(connections.open(), 3);
        drop(a1);
        assert_eq!(connections.open(), 2);
        let _a3 = connections.admit(ip(1)).unwrap();
        assert_eq!(connections.admit(ip(1)).err(), Some(Refused::Total));
    }

    #[test]
    fn a_peer_with_no_connections_left_is_forgotten() {
        let connections = Connections::new(ConnectionCaps::default());
        drop(connections.admit(ip(9)).unwrap());
        assert!(connections.open.lock().unwrap().per_peer.is_empty());
    }
}
