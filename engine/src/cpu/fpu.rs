//! The x87 FPU and SSE register state, and its `fxsave` image.
//!
//! Kernel code does no floating-point arithmetic, but it saves, restores and resets
//! this state (`fxsave`/`fxrstor` on every context switch, `fninit` at boot,
//! `ldmxcsr` in `kernel_fpu_begin`). The replay CPU keeps the state as those
//! instructions see it and produces the image bytes the recording host produces
//! (checked against KVM by engine/tests/cpu_vs_kvm_linux.rs). The instructions are in
//! `exec/fpu.rs`.

use crate::arch::fpu::{
    EXCEPTIONS, FCW_BITS, FCW_INIT, FCW_ONE, FOP_BITS, FSW_B, FSW_ES, FXSAVE_SIZE, MXCSR_INIT,
    MXCSR_MASK,
};

/// The x87 and SSE registers. [`Default`] is the state at reset, which is also the state
/// of a new KVM vCPU and so of every recording's first instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FpuState {
    /// Control word.
    pub fcw: u16,
    /// Status word (TOP included).
    pub fsw: u16,
    /// The abridged tag word of the `fxsave` image: bit i set when physical register i
    /// holds a value.
    pub ftw: u8,
    /// The last x87 opcode (11 bits).
    pub fop: u16,
    /// The last x87 instruction and data pointers.
    pub fip: u64,
    pub fdp: u64,
    /// The eight 80-bit x87/MMX registers R0-R7, in physical order: ST(i) is
    /// R((TOP + i) mod 8), TOP being FSW bits 11-13.
    pub st: [[u8; 10]; 8],
    pub xmm: [u128; 16],
    pub mxcsr: u32,
}

impl Default for FpuState {
    fn default() -> Self {
        FpuState {
            fcw: FCW_INIT,
            fsw: 0,
            ftw: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
            st: [[0; 10]; 8],
            xmm: [0; 16],
            mxcsr: MXCSR_INIT,
        }
    }
}

/// A whole `fxsave` image.
pub type FxsaveImage = [u8; FXSAVE_SIZE];

// Offsets in the image.
const FCW: usize = 0;
const FSW: usize = 2;
const FTW: usize = 4;
const FOP: usize = 6;
const FIP: usize = 8;
const FDP: usize = 16;
const MXCSR: usize = 24;
const MXCSR_MASK_AT: usize = 28;
const ST0: usize = 32;
const XMM0: usize = 160;

impl FpuState {
    /// `fninit`: the x87 control state to its initial values; the registers and MXCSR
    /// stay.
    pub fn init_x87(&mut self) {
        self.fcw = FCW_INIT;
        self.fsw = 0;
        self.ftw = 0;
        self.fop = 0;
        self.fip = 0;
        self.fdp = 0;
    }

    /// The top-of-stack register number (FSW.TOP).
    pub fn top(&self) -> usize {
        ((self.fsw >> 11) & 7) as usize
    }

    /// Whether an unmasked x87 exception is pending (FSW.ES).
    pub fn x87_error_pending(&self) -> bool {
        self.fsw & FSW_ES != 0
    }

    /// The image `fxsave` and `fxsave64` write on the recording host, whose KVM
    /// instruction emulator runs both as the host's 32-bit-format `fxsave`: FIP and FDP
    /// as 32 bits, FCS and FDS as 0 (this CPU deprecates them), and bytes 416-511 (the
    /// reserved and software-available area) as 0.
    pub fn to_fxsave_image(&self) -> FxsaveImage {
        let mut b = [0u8; FXSAVE_SIZE];
        b[FCW..FCW + 2].copy_from_slice(&self.fcw.to_le_bytes());
        b[FSW..FSW + 2].copy_from_slice(&self.fsw.to_le_bytes());
        b[FTW] = self.ftw;
        b[FOP..FOP + 2].copy_from_slice(&self.fop.to_le_bytes());
        b[FIP..FIP + 4].copy_from_slice(&(self.fip as u32).to_le_bytes());
        b[FDP..FDP + 4].copy_from_slice(&(self.fdp as u32).to_le_bytes());
        b[MXCSR..MXCSR + 4].copy_from_slice(&self.mxcsr.to_le_bytes());
        b[MXCSR_MASK_AT..MXCSR_MASK_AT + 4].copy_from_slice(&MXCSR_MASK.to_le_bytes());
        // The image holds the stack, ST(0) first.
        for i in 0..8 {
            let r = &self.st[(self.top() + i) % 8];
            b[ST0 + 16 * i..ST0 + 16 * i + 10].copy_from_slice(r);
        }
        for (i, x) in self.xmm.iter().enumerate() {
            b[XMM0 + 16 * i..XMM0 + 16 * (i + 1)].copy_from_slice(&x.to_le_bytes());
        }
        b
    }

    /// The MXCSR value an image would load (what `fxrstor` checks before loading).
    pub fn image_mxcsr(image: &FxsaveImage) -> u32 {
        u32::from_le_bytes(image[MXCSR..MXCSR + 4].try_into().expect("4 bytes"))
    }

    /// `fxrstor` and `fxrstor64` of `image` on the recording host (the caller has
    /// checked MXCSR against [`MXCSR_MASK`]): FCW keeps only its defined bits, FSW's ES
    /// and B are recomputed from the exception flags and the new masks, FOP keeps 11
    /// bits, FIP and FDP are taken as 32 bits (KVM's emulator restores with the 32-bit
    /// format), FCS, FDS and the reserved bytes are ignored.
    pub fn load_fxsave_image(&mut self, image: &FxsaveImage) {
        let u16_at = |i: usize| u16::from_le_bytes([image[i], image[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(image[i..i + 4].try_into().expect("4 bytes"));
        self.fcw = (u16_at(FCW) & FCW_BITS) | FCW_ONE;
        let fsw = u16_at(FSW) & !(FSW_ES | FSW_B);
        let unmasked = fsw & !self.fcw & EXCEPTIONS;
        self.fsw = if unmasked != 0 {
            fsw | FSW_ES | FSW_B
        } else {
            fsw
        };
        self.ftw = image[FTW];
        self.fop = u16_at(FOP) & FOP_BITS;
        self.fip = u32_at(FIP) as u64;
        self.fdp = u32_at(FDP) as u64;
        self.mxcsr = Self::image_mxcsr(image);
        let top = self.top();
        for i in 0..8 {
            self.st[(top + i) % 8].copy_from_slice(&image[ST0 + 16 * i..ST0 + 16 * i + 10]);
        }
        for (i, x) in self.xmm.iter_mut().enumerate() {
            let at = XMM0 + 16 * i;
            *x = u128::from_le_bytes(image[at..at + 16].try_into().expect("16 bytes"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern() -> FxsaveImage {
        let mut b = [0u8; FXSAVE_SIZE];
        for (i, v) in b.iter_mut().enumerate() {
            *v = (i * 37 + 11) as u8;
        }
        b[MXCSR..MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        b
    }

    #[test]
    fn the_reset_state_saves_as_a_new_vcpu_does() {
        let b = FpuState::default().to_fxsave_image();
        let mut want = [0u8; FXSAVE_SIZE];
        want[..4].copy_from_slice(&[0x7f, 0x03, 0, 0]);
        want[24..32].copy_from_slice(&[0x80, 0x1f, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!(b, want);
    }

    /// The bytes the recording host saved after restoring this pattern (measured under
    /// KVM; engine/tests/cpu_vs_kvm_linux.rs checks the same on a KVM host).
    #[test]
    fn a_restored_pattern_saves_as_the_recording_host_saves_it() {
        let image = pattern();
        let mut f = FpuState::default();
        f.load_fxsave_image(&image);
        let b = f.to_fxsave_image();
        assert_eq!(
            b[..32],
            [
                0x4b, 0x10, 0xd5, 0xfa, 0x9f, 0x00, 0xe9, 0x06, 0x33, 0x58, 0x7d, 0xa2, 0, 0, 0, 0,
                0x5b, 0x80, 0xa5, 0xca, 0, 0, 0, 0, 0x80, 0x1f, 0, 0, 0xff, 0xff, 0, 0
            ]
        );
        for i in 0..8 {
            let at = ST0 + 16 * i;
            assert_eq!(b[at..at + 10], image[at..at + 10], "st{i}");
            assert_eq!(b[at + 10..at + 16], [0; 6], "st{i} reserved");
        }
        assert_eq!(b[XMM0..416], image[XMM0..416]);
        assert_eq!(b[416..], [0; 96]);
        // Saving and restoring again changes nothing.
        let mut g = FpuState::default();
        g.load_fxsave_image(&b);
        assert_eq!(g, f);
    }

    #[test]
    fn fsw_summary_follows_the_masks() {
        let mut image = pattern();
        // Every exception masked: ES and B cleared although set in the image.
        image[FCW..FCW + 2].copy_from_slice(&0x037fu16.to_le_bytes());
        image[FSW..FSW + 2].copy_from_slice(&0xb8bfu16.to_le_bytes());
        let mut f = FpuState::default();
        f.load_fxsave_image(&image);
        assert_eq!(f.fsw, 0x383f);
        assert!(!f.x87_error_pending());
        // ZE unmasked and set: pending.
        image[FCW..FCW + 2].copy_from_slice(&0x037bu16.to_le_bytes());
        image[FSW..FSW + 2].copy_from_slice(&0x0004u16.to_le_bytes());
        f.load_fxsave_image(&image);
        assert_eq!(f.fsw, 0x8084);
        assert!(f.x87_error_pending());
        f.init_x87();
        assert_eq!(f.fsw, 0);
        assert_eq!(f.fcw, FCW_INIT);
    }

    /// The image holds ST(0)..ST(7); `fninit` sets TOP to 0 without moving the
    /// registers, so a save after it shows them rotated (measured under KVM: with TOP 1
    /// the first register saved after `fninit` is the image's ST(7)).
    #[test]
    fn the_image_holds_the_stack_from_top() {
        for top in 0..8u16 {
            let mut image = [0u8; FXSAVE_SIZE];
            image[FSW..FSW + 2].copy_from_slice(&(top << 11).to_le_bytes());
            image[MXCSR..MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
            for i in 0..8 {
                image[ST0 + 16 * i] = 0xa0 + i as u8;
            }
            let mut f = FpuState::default();
            f.load_fxsave_image(&image);
            assert_eq!(
                f.to_fxsave_image()[ST0..XMM0],
                image[ST0..XMM0],
                "top {top}"
            );
            f.init_x87();
            let b = f.to_fxsave_image();
            for i in 0..8 {
                let from = (i + 8 - top as usize) % 8;
                assert_eq!(b[ST0 + 16 * i], 0xa0 + from as u8, "top {top} st{i}");
            }
        }
    }
}
