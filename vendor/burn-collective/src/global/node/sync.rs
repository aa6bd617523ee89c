use std::{
    collections::{HashMap, HashSet},
    marker::PhantomData,
    sync::{Arc, Mutex},
};

use burn_communication::{CommunicationChannel, Message, Protocol, ProtocolClient};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, RwLock};

use crate::{NodeId, node::base::NodeState};

/// Handles the status of sync requests from other nodes
///
/// vlmtune patch: upstream kept one list of synced nodes that was never cleared (it cleared a
/// copy), so the second barrier after `register` waited for ever, and a fast node's request for
/// the next barrier counted towards the current one. Requests now carry the number of the
/// all-reduce they end (`call`), each barrier counts its own, and the wait cannot miss a
/// notification sent between the check and the wait.
pub(crate) struct SyncService<P: Protocol> {
    /// Current node's state, shared with the thread that does aggregations
    node_state: Arc<RwLock<Option<NodeState>>>,
    /// The nodes that reached each pending barrier (by call number).
    syncing_peers: Mutex<HashMap<u64, HashSet<NodeId>>>,
    /// Notification on each incoming sync request
    sync_notif: Notify,

    _p: PhantomData<P>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SyncRequest(NodeId, u64);

impl<P: Protocol> SyncService<P> {
    pub fn new(node_state: Arc<RwLock<Option<NodeState>>>) -> Self {
        Self {
            node_state,
            syncing_peers: Mutex::new(HashMap::new()),
            sync_notif: Notify::new(),
            _p: PhantomData,
        }
    }

    fn add_syncing_peer(&self, peer: NodeId, call: u64) {
        let mut syncing_peers = self.syncing_peers.lock().unwrap();
        syncing_peers.entry(call).or_default().insert(peer);
    }

    /// Sync with all peers at the end of all-reduce number `call`.
    pub async fn sync(&self, call: u64) {
        // we can't sync while we register
        let node_state = self.node_state.read().await;
        let node_state = node_state
            .as_ref()
            .expect("Trying to sync a node before having registered to the orchestrator");

        // this peer is syncing
        self.add_syncing_peer(node_state.node_id, call);
        for (id, addr) in &node_state.nodes {
            if *id == node_state.node_id {
                continue;
            }

            let mut connection = P::Client::connect(addr.clone(), "sync")
                .await
                .expect("Couldn't connect to peer for sync");
            let msg = SyncRequest(node_state.node_id, call);
            let sync_bytes = rmp_serde::to_vec(&msg).unwrap();
            connection
                .send(Message::new(sync_bytes.into()))
                .await
                .expect("Peer closed connection unexpectedly");
        }
        let all_node_ids: HashSet<NodeId> = node_state.nodes.keys().cloned().collect();
        loop {
            // Registered before the check, so a request arriving in between still wakes us.
            let notified = self.sync_notif.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut syncing_peers = self.syncing_peers.lock().unwrap();
                if syncing_peers.get(&call) == Some(&all_node_ids) {
                    // all nodes have synced
                    syncing_peers.remove(&call);
                    return;
                }
            }
            // Wait for the next sync to come in
            notified.await
        }
    }

    pub async fn handle_sync_connection<C: CommunicationChannel>(&self, mut channel: C) {
        let msg = channel.recv().await.unwrap();
        let Some(msg) = msg else {
            return;
        };

        let msg = rmp_serde::from_slice::<SyncRequest>(&msg.data).unwrap();

        self.add_syncing_peer(msg.0, msg.1);

        self.sync_notif.notify_waiters();
    }
}
