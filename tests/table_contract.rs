//! Every table this crate ships passes the `SessionTable` contract, in several shapes.

use std::time::Duration;

use mcp_affinity::table::{MemoryTable, MemoryTableConfig, NullTable, contract};

#[test]
fn memory_table_with_defaults_keeps_the_contract() {
    contract::check(MemoryTable::new);
}

#[test]
fn memory_table_with_one_shard_and_a_small_capacity_keeps_the_contract() {
    contract::check(|| {
        MemoryTable::with_config(MemoryTableConfig::new().with_shards(1).with_capacity(64))
    });
}

#[test]
fn memory_table_with_a_tenant_capacity_keeps_the_contract() {
    contract::check(|| {
        MemoryTable::with_config(
            MemoryTableConfig::new()
                .with_shards(4)
                .with_capacity(200)
                .with_tenant_capacity(20),
        )
    });
}

#[test]
fn memory_table_without_ttl_keeps_the_contract() {
    contract::check(|| MemoryTable::with_config(MemoryTableConfig::new().with_idle_ttl(None)));
}

#[test]
fn memory_table_with_a_short_ttl_keeps_the_contract() {
    contract::check(|| {
        MemoryTable::with_config(
            MemoryTableConfig::new().with_idle_ttl(Some(Duration::from_millis(300))),
        )
    });
}

#[test]
fn memory_table_with_siphash_keeps_the_contract() {
    contract::check(|| {
        MemoryTable::with_hasher(
            MemoryTableConfig::new(),
            std::collections::hash_map::RandomState::new(),
        )
    });
}

#[test]
fn null_table_keeps_the_contract() {
    contract::check(|| NullTable);
}
