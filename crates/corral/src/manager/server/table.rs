//! The objects a server holds, and who holds each.

use std::collections::HashMap;

use serde_pickle::Value;

use super::objects::Object;
use crate::manager::protocol::{self, Exc, Kind};

struct Entry {
    object: Object,
    kind: Kind,
    /// Connections holding it, pins (live or in grace).
    holds: u32,
    /// Python clients' reference count (`incref`/`decref`).
    python: u32,
    /// Proxies to it stored inside other objects.
    nested: u32,
    /// Registered by name: lives as long as the server.
    named: bool,
}

impl Entry {
    fn unheld(&self) -> bool {
        self.holds == 0 && self.python == 0 && self.nested == 0 && !self.named
    }
}

/// Objects by id.
#[derive(Default)]
pub(super) struct Table {
    entries: HashMap<u64, Entry>,
    names: HashMap<String, u64>,
    next: u64,
    /// Objects whose last holder left: freed by [`Table::collect`].
    doomed: Vec<u64>,
}

impl Table {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn exists(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    pub(super) fn kind(&self, id: u64) -> Option<Kind> {
        self.entries.get(&id).map(|e| e.kind)
    }

    pub(super) fn object_mut(&mut self, id: u64) -> Option<&mut Object> {
        self.entries.get_mut(&id).map(|e| &mut e.object)
    }

    pub(super) fn named(&self, name: &str) -> Option<u64> {
        self.names.get(name).copied()
    }

    pub(super) fn create(&mut self, kind: Kind, args: Vec<Value>) -> Result<u64, Exc> {
        let (object, stored) = Object::new(kind, args)?;
        self.next += 1;
        let id = self.next;
        self.entries.insert(
            id,
            Entry {
                object,
                kind,
                holds: 0,
                python: 0,
                nested: 0,
                named: false,
            },
        );
        self.nest(&stored, &[]);
        // Unheld until the caller takes it (in the same turn).
        Ok(id)
    }

    pub(super) fn register(&mut self, name: &str, kind: Kind) {
        if let Ok(id) = self.create(kind, Vec::new()) {
            if let Some(e) = self.entries.get_mut(&id) {
                e.named = true;
            }
            self.names.insert(name.to_owned(), id);
        }
    }

    fn adjust(&mut self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.entries.get_mut(&id) {
            f(e);
            if e.unheld() {
                self.doomed.push(id);
            }
        }
    }

    pub(super) fn hold(&mut self, id: u64) {
        self.adjust(id, |e| e.holds += 1);
    }

    pub(super) fn unhold(&mut self, id: u64) {
        self.adjust(id, |e| e.holds = e.holds.saturating_sub(1));
    }

    pub(super) fn incref(&mut self, id: u64) {
        self.adjust(id, |e| e.python += 1);
    }

    pub(super) fn decref(&mut self, id: u64) {
        self.adjust(id, |e| e.python = e.python.saturating_sub(1));
    }

    /// Values entered (`stored`) and left (`removed`) an object: proxies in
    /// them hold their objects while stored.
    pub(super) fn nest(&mut self, stored: &[Value], removed: &[Value]) {
        let mut ids = Vec::new();
        stored.iter().for_each(|v| protocol::proxy_ids(v, &mut ids));
        ids.into_iter()
            .for_each(|id| self.adjust(id, |e| e.nested += 1));
        let mut ids = Vec::new();
        removed
            .iter()
            .for_each(|v| protocol::proxy_ids(v, &mut ids));
        ids.into_iter()
            .for_each(|id| self.adjust(id, |e| e.nested = e.nested.saturating_sub(1)));
    }

    /// Frees every object nobody holds (and what only they held); their
    /// ids.
    pub(super) fn collect(&mut self) -> Vec<u64> {
        let mut freed = Vec::new();
        while let Some(id) = self.doomed.pop() {
            if !self.entries.get(&id).is_some_and(Entry::unheld) {
                continue;
            }
            if let Some(e) = self.entries.remove(&id) {
                let inner = e.object.into_values();
                self.nest(&[], &inner);
                freed.push(id);
            }
        }
        freed
    }
}
