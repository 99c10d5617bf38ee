//! The machine's control ports: power-off (isa-debug-exit compatible: any write) and the
//! guest agent's doorbell (a 4-byte write of a code, `krr_agent_abi.h`). Neither has
//! anything to read.

use super::{Device, Doorbell, Effect, Io};

/// Any write powers the machine off.
#[derive(Debug, Default, Clone, Copy)]
pub struct PowerOff;

impl Device for PowerOff {
    fn write(&mut self, _offset: u64, _data: &[u8], io: &mut Io<'_>) {
        io.request(Effect::PowerOff);
    }
}

/// The agent rings it when its ring is full or to flush it; the recorder collects the
/// records and resets the ring.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentDoorbell;

impl Device for AgentDoorbell {
    fn write(&mut self, _offset: u64, data: &[u8], io: &mut Io<'_>) {
        let rung = match <[u8; 4]>::try_from(data) {
            Ok(code) => Doorbell::Code(u32::from_le_bytes(code)),
            Err(_) => Doorbell::BadSize(data.len()),
        };
        io.request(Effect::Doorbell(rung));
    }
}
