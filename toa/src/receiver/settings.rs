//! The receiver's settings in the programs' maps: two slots each (see
//! `toa_common::config`). A configuration is written completely into the
//! slot not in force; one word, written last, puts it in force. A failure
//! before that word leaves the programs reading exactly what they read
//! before.

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, MapData, lpm_trie::Key},
};
use toa_common::{
    config::{PortSet, ReceiverConfig, SLOTS},
    maps,
    trust::{TrustKey, slot_of},
};

use crate::{Error, Result, config::Prefix};

/// One configuration as the programs read it, for any slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    /// Formats and flags (the slot field is set when written).
    pub config: ReceiverConfig,
    /// Local ports.
    pub ports: PortSet,
    /// Trusted prefixes.
    pub trusted: Vec<Prefix>,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// The slot in force.
pub fn active(ebpf: &mut Ebpf) -> Result<u32> {
    let map = ebpf.map_mut(maps::ACTIVE).ok_or(Error::MissingMap(maps::ACTIVE))?;
    let active: Array<&mut MapData, u32> = Array::try_from(map).map_err(map_err(maps::ACTIVE))?;
    Ok(active.get(&0, 0).map_err(map_err(maps::ACTIVE))? % SLOTS)
}

/// Puts `slot` in force: the one map update the programs see a
/// configuration change by. Called only once the slot is complete.
pub fn activate(ebpf: &mut Ebpf, slot: u32) -> Result<()> {
    let map = ebpf.map_mut(maps::ACTIVE).ok_or(Error::MissingMap(maps::ACTIVE))?;
    let mut active: Array<&mut MapData, u32> = Array::try_from(map).map_err(map_err(maps::ACTIVE))?;
    active.set(0, slot, 0).map_err(map_err(maps::ACTIVE))
}

/// Writes `values` into `slot` (never the slot in force): its old trusted
/// prefixes are removed first, then the new ones, the ports and the
/// configuration are written.
pub fn write(ebpf: &mut Ebpf, slot: u32, values: &Values) -> Result<()> {
    clear_trusted(ebpf, slot)?;
    {
        let map = ebpf.map_mut(maps::TRUSTED).ok_or(Error::MissingMap(maps::TRUSTED))?;
        let mut trie: LpmTrie<&mut MapData, TrustKey, u8> = LpmTrie::try_from(map).map_err(map_err(maps::TRUSTED))?;
        for prefix in &values.trusted {
            let (data, len) = prefix.trie_key(slot);
            trie.insert(&Key::new(len, data), 1, 0).map_err(map_err(maps::TRUSTED))?;
        }
    }
    {
        let map = ebpf.map_mut(maps::PORTS).ok_or(Error::MissingMap(maps::PORTS))?;
        let mut ports: Array<&mut MapData, PortSet> = Array::try_from(map).map_err(map_err(maps::PORTS))?;
        ports.set(slot, values.ports, 0).map_err(map_err(maps::PORTS))?;
    }
    let map = ebpf.map_mut(maps::CONFIG).ok_or(Error::MissingMap(maps::CONFIG))?;
    let mut config: Array<&mut MapData, ReceiverConfig> = Array::try_from(map).map_err(map_err(maps::CONFIG))?;
    config.set(slot, ReceiverConfig { slot, ..values.config }, 0).map_err(map_err(maps::CONFIG))
}

/// Empties `slot` (never the slot in force): what a failed write left there goes.
pub fn clear(ebpf: &mut Ebpf, slot: u32) -> Result<()> {
    clear_trusted(ebpf, slot)?;
    let map = ebpf.map_mut(maps::PORTS).ok_or(Error::MissingMap(maps::PORTS))?;
    let mut ports: Array<&mut MapData, PortSet> = Array::try_from(map).map_err(map_err(maps::PORTS))?;
    ports.set(slot, PortSet::EMPTY, 0).map_err(map_err(maps::PORTS))?;
    let map = ebpf.map_mut(maps::CONFIG).ok_or(Error::MissingMap(maps::CONFIG))?;
    let mut config: Array<&mut MapData, ReceiverConfig> = Array::try_from(map).map_err(map_err(maps::CONFIG))?;
    let empty = ReceiverConfig { formats: toa_common::Formats { shapes: [0; 256] }, flags: 0, slot };
    config.set(slot, empty, 0).map_err(map_err(maps::CONFIG))
}

/// Removes the trusted prefixes of `slot`.
fn clear_trusted(ebpf: &mut Ebpf, slot: u32) -> Result<()> {
    let map = ebpf.map_mut(maps::TRUSTED).ok_or(Error::MissingMap(maps::TRUSTED))?;
    let mut trie: LpmTrie<&mut MapData, TrustKey, u8> = LpmTrie::try_from(map).map_err(map_err(maps::TRUSTED))?;
    let keys: Vec<Key<TrustKey>> = trie
        .keys()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(map_err(maps::TRUSTED))?
        .into_iter()
        .filter(|k| slot_of(&k.data()) == slot)
        .collect();
    for key in keys {
        trie.remove(&key).map_err(map_err(maps::TRUSTED))?;
    }
    Ok(())
}
