//! The keys accepted on this thread, most recent last: a few per thread, since each
//! caller presents one key.

use std::cell::RefCell;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretSlice};
use subtle::ConstantTimeEq;

use super::Caller;

const KEPT: usize = 8;

/// The gate that accepted a key, the key, and its caller.
type Entry = (u64, SecretSlice<u8>, Arc<Caller>);

thread_local! {
    static KEYS: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn recall(gate: u64, presented: &[u8]) -> Option<Arc<Caller>> {
    KEYS.with_borrow(|keys| {
        keys.iter()
            .find(|(id, key, _)| *id == gate && bool::from(key.expose_secret().ct_eq(presented)))
            .map(|(_, _, caller)| caller.clone())
    })
}

pub(super) fn remember(gate: u64, presented: &[u8], caller: &Arc<Caller>) {
    KEYS.with_borrow_mut(|keys| {
        if keys.len() == KEPT {
            keys.remove(0);
        }
        keys.push((gate, SecretSlice::from(presented.to_vec()), caller.clone()));
    });
}
