//! Cross-module tests: operations on every format, entry laws, the model state machine and the
//! cross-checks against peer crates. Fixtures come from the public `model` module, which the
//! fuzz target shares.

mod asid;
mod concurrency;
mod crosscheck;
mod extremes;
mod laws;
mod model;
mod ops;
mod share;
mod update;

pub(crate) use crate::arch::x86_64::X86_64;
pub(crate) use crate::model::{
    all_aarch64, all_x86, arena_for, mmu_for, sizes_of, table, HostFormat as TestFormat,
};
pub(crate) use crate::softmmu::{SoftMmu, Walker};
pub(crate) use crate::{PageTable, Translation};
