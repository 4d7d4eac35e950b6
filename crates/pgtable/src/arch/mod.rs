//! Architecture backends: table formats (pure data and bit encoders, tested on every host) and
//! hardware access (CR3, INVLPG, TLBI, system registers), compiled when `target_arch`
//! matches (on a bare-metal target or a host of that architecture alike) and never under
//! `cfg(test)`, so all logic runs on the host and unit tests never build privileged code.

pub mod aarch64;
pub mod x86_64;

#[cfg(all(not(test), target_arch = "x86_64"))]
pub mod x86_64_hw;

#[cfg(all(not(test), target_arch = "aarch64"))]
pub mod aarch64_hw;
