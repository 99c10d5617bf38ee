//! Blocks: runs of fast-form instructions within one page of code, in the order they
//! execute: a direct `jmp` or `call` to the same page goes on at its target, a
//! conditional jump goes on at the next instruction, and a `ret` that returns to a
//! `call` earlier in the block goes on at its return address. A block is cut at any
//! other branch or return, at the first instruction without a fast form, at the end of
//! the page and after [`MAX_BLOCK_OPS`] operations. A block's operations sit side by
//! side and run one into the next: each handler ends by jumping to the next one's (see
//! `exec/fast.rs`), so a block costs one lookup by RIP and one call, and its
//! instruction count is written once.
//!
//! A block runs only where executing its instructions one by one through
//! [`Cpu::step`] would do nothing else: the whole block fits below the instruction
//! limit, no breakpoint lies on a line it starts an instruction on, RF and the interrupt
//! shadow are clear, no MMIO input is waiting. It is left where a conditional jump is
//! taken or a `ret` returns elsewhere than predicted (execution goes on with the block
//! there), and it stops, after the instruction that caused it, on a fault, an MMIO
//! write, or a write to code or page tables (which may change what the rest of the
//! block is). Blocks are copies of decoded-cache entries and are dropped whenever any
//! of those is.

use super::exec::{BlockOp, Transfer, predicted_return};
use super::{Cpu, EMPTY, Exit, FETCHED_UNCACHED, TAG_GPA_LIMIT, flags, next_epoch};
use crate::memory::{GuestMemory, line_bit};

const TABLE_BITS: u32 = 12;
/// Operations in one block at most.
pub(crate) const MAX_BLOCK_OPS: usize = 32;
/// The arena is emptied (all blocks dropped) when it would grow past this.
const MAX_ARENA_OPS: usize = 1 << 18;

#[derive(Debug, Clone, Copy)]
struct BlockEntry {
    /// Guest-physical address of the first instruction with the epoch in bits 52..64.
    tag: u64,
    /// Where its operations start in the arena, and how many (0: the instruction there
    /// has no fast form, so no block starts there).
    start: u32,
    len: u32,
    /// The 64-byte lines of the page that hold the start of one of its instructions
    /// (bit n: line n), for the breakpoint check.
    lines: u64,
}

/// The block cache: a direct-mapped table of blocks over an arena of operations.
#[derive(Debug, Default)]
pub(super) struct Blocks {
    table: Vec<BlockEntry>,
    ops: Vec<BlockOp>,
    /// Current epoch, pre-shifted to bits 52..64.
    epoch: u64,
}

impl Blocks {
    fn index(gpa: u64) -> usize {
        ((gpa ^ (gpa >> TABLE_BITS)) as usize) & ((1 << TABLE_BITS) - 1)
    }

    /// Allocates the table on first use (a cloned CPU starts without one).
    pub(super) fn ensure_allocated(&mut self) {
        if self.table.is_empty() {
            self.table = vec![
                BlockEntry {
                    tag: EMPTY,
                    start: 0,
                    len: 0,
                    lines: 0,
                };
                1 << TABLE_BITS
            ];
        }
    }

    /// Drops every block.
    pub(super) fn invalidate_all(&mut self) {
        self.ops.clear();
        if next_epoch(&mut self.epoch) {
            for e in self.table.iter_mut() {
                e.tag = EMPTY;
            }
        }
    }
}

impl Cpu {
    /// Runs blocks from RIP on, one after another, while blocks may run (see the module
    /// documentation) and the fetch page stays the same. `None`: no block ran (the
    /// caller steps instead); `Some(exit)`: blocks ran, and `exit` is what ended the
    /// run, if anything did.
    #[inline(always)]
    pub(super) fn run_blocks(
        &mut self,
        mem: &mut GuestMemory,
        limit: u64,
        any_breakpoints: bool,
    ) -> Option<Option<Exit>> {
        let rip = self.st.rip;
        // Blocks neither fetch nor translate: the fetch page stays for the whole run.
        let (page, page_gpa) = (self.tlb.fetch_vpn, self.tlb.fetch_page);
        if self.st.interrupt_shadow
            || self.st.rflags & flags::RF != 0
            || self.mmio_input.is_some()
            || rip >> 12 != page
            // Not representable in a tag (nor cached by the decode cache).
            || page_gpa >= TAG_GPA_LIMIT
            // A breakpoint on RIP's line: no block could run (see below).
            || (any_breakpoints && self.breakpoint_on_line(rip))
        {
            return None;
        }
        // Fast forms change none of the conditions above, nor the breakpoints. A block
        // stops after a write that changes code or page tables (`Stop::After`), so the
        // caches are in step with the memory whenever a block starts.
        debug_assert_eq!(self.seen_code_generation, mem.code_generation());
        debug_assert_eq!(self.seen_pt_generation, mem.pt_generation());
        // The handlers take the CPU mutably and their operation by reference: lend them
        // the arena for the run (fast forms never touch the block cache).
        let mut ops = std::mem::take(&mut self.blocks.ops);
        let mut ran = false;
        let mut exit = None;
        loop {
            let rip = self.st.rip;
            if rip >> 12 != page {
                break;
            }
            let gpa = page_gpa | (rip & 0xfff);
            let Some(&found) = self.blocks.table.get(Blocks::index(gpa)) else {
                break;
            };
            let mut e = found;
            if e.tag != gpa | self.blocks.epoch {
                // No block where one could not run anyway (a breakpoint on its line).
                if any_breakpoints && self.breakpoint_on_line(rip) {
                    break;
                }
                self.blocks.ops = ops;
                e = self.build_block(mem, rip, gpa);
                ops = std::mem::take(&mut self.blocks.ops);
            }
            // An empty block (len 0) wraps around to the largest count: it never runs.
            if (e.len as u64).wrapping_sub(1) >= limit - self.icount
                || (any_breakpoints && self.fetch_page_breakpoint_lines & e.lines != 0)
            {
                break;
            }
            ran = true;
            // Entries name ranges of the arena (built with them, dropped with it).
            let ops_of_block = &ops[e.start as usize..(e.start + e.len) as usize];
            let Some((first, rest)) = ops_of_block.split_first() else {
                break;
            };
            // The operations run one into the next (each handler's tail call); RIP
            // moves with them, the instruction count is written once per block.
            let base = self.icount;
            match (first.handler)(self, mem, first, rest) {
                Ok(()) => self.icount = base + e.len as u64,
                Err(stop) if stop.left_block() => {
                    self.icount = base + e.len.saturating_sub(stop.remaining()) as u64;
                }
                Err(stop) if stop.faulted() => {
                    self.icount = base + e.len.saturating_sub(1 + stop.remaining()) as u64;
                    self.mmio_write = None;
                    self.mmio_input = None;
                    let fault = self.take_stop_fault();
                    exit = self.handle_fault(mem, fault);
                    break;
                }
                Err(stop) => {
                    self.icount = base + e.len.saturating_sub(stop.remaining()) as u64;
                    if let Some((gpa, size, value)) = self.mmio_write.take() {
                        exit = Some(Exit::MmioWrite { gpa, size, value });
                    }
                    break;
                }
            }
            if self.icount >= limit {
                break;
            }
        }
        debug_assert!(self.blocks.ops.is_empty());
        self.blocks.ops = ops;
        ran.then_some(exit)
    }

    /// Builds (and enters in the table) the block starting at `rip`, guest-physical
    /// `gpa`, in the current fetch page.
    #[inline(never)]
    fn build_block(&mut self, mem: &mut GuestMemory, rip: u64, gpa: u64) -> BlockEntry {
        const NONE: BlockEntry = BlockEntry {
            tag: EMPTY,
            start: 0,
            len: 0,
            lines: 0,
        };
        if self.blocks.ops.len() + MAX_BLOCK_OPS > MAX_ARENA_OPS {
            self.blocks.invalidate_all();
        }
        let epoch = self.blocks.epoch;
        let start = self.blocks.ops.len();
        let (mut r, mut g) = (rip, gpa);
        let mut lines = 0u64;
        let mut len = 0;
        // Return addresses of the calls followed so far, innermost last.
        let mut returns = [0u64; 4];
        let mut calls = 0;
        let same_page = |a: u64| a >> 12 == rip >> 12;
        while len < MAX_BLOCK_OPS && same_page(r) {
            let decoded = self.decode_in_page(mem, r, g);
            if self.blocks.epoch != epoch {
                // Decoding emptied the caches (see `decode_in_page`): no block this
                // time; the instruction is stepped.
                return NONE;
            }
            let idx = match decoded {
                Ok(Some(idx)) if idx != FETCHED_UNCACHED => idx,
                _ => break,
            };
            let mut op = self.decode_cache[idx].op;
            let Some(mut handler) = op.handler else {
                break;
            };
            let after = r.wrapping_add(op.len as u64);
            let next = match op.transfer {
                Transfer::None => after,
                // A jump or call to the same page goes on at its target.
                Transfer::Jump => op.target(r),
                Transfer::Call => {
                    if calls < returns.len() {
                        returns[calls] = after;
                        calls += 1;
                    } else {
                        returns.rotate_left(1);
                        returns[calls - 1] = after;
                    }
                    op.target(r)
                }
                // A conditional jump goes on at the next instruction (the block is left
                // where it is taken).
                Transfer::Conditional => after,
                // A return to a call in the block goes on at its return address (the
                // block is left where it returns elsewhere).
                Transfer::Return if calls > 0 => {
                    calls -= 1;
                    let predicted = returns[calls];
                    handler = predicted_return();
                    op.imm = predicted.wrapping_sub(r);
                    predicted
                }
                Transfer::Return | Transfer::Other => r,
            };
            self.blocks.ops.push(BlockOp { handler, op });
            len += 1;
            lines |= line_bit(r);
            if next == r || !same_page(next) {
                break;
            }
            g = (g & !0xfff) | (next & 0xfff);
            r = next;
        }
        self.drop_dead_flags(start);
        let e = BlockEntry {
            tag: gpa | self.blocks.epoch,
            start: start as u32,
            len: len as u32,
            lines,
        };
        self.blocks.table[Blocks::index(gpa)] = e;
        e
    }

    /// Gives the operations of the block at `start` in the arena whose status flags
    /// nothing can observe their quiet form (see [`FastOp::quiet`]), going
    /// backwards from the end of the block with the flags still to be read ("live").
    /// Every flag is live at the end of the block (the next block, an interrupt, a
    /// digest or any reader of the state may look at them), before an operation
    /// that may fault or exit (exception delivery pushes RFLAGS; an exit shows the
    /// state) and before one that may leave the block (a conditional jump, which also
    /// reads them, or a return); an operation that writes memory keeps its own flags
    /// too, as the block may stop right after it. Otherwise a flag stops being live
    /// above an operation that sets it whatever its value before (an undefined flag the
    /// recording host keeps is not set). Blocks run whole or stop only at those
    /// operations, and the instruction count's boundaries (limits, interrupts, digests)
    /// fall between blocks, so every flag that can be observed is exact. An operation
    /// whose flags stay takes its natural form where the recording's rules give its
    /// undefined flags their natural values ([`FastOp::natural`]).
    fn drop_dead_flags(&mut self, start: usize) {
        let mut live = flags::STATUS;
        for BlockOp { handler, op } in self.blocks.ops[start..].iter_mut().rev() {
            let written = op.flags.overwritten(&self.undefined);
            if written & live == 0
                && !op.writes_memory
                && let Some(quiet) = op.quiet
            {
                *handler = quiet;
            } else if let Some(natural) = op.natural
                && op.flags.natural_under(&self.undefined)
            {
                *handler = natural;
            }
            // A conditional jump or a return may leave the block.
            let exit = matches!(
                op.transfer,
                Transfer::Conditional | Transfer::Return | Transfer::Other
            );
            live = if op.may_fault || exit {
                flags::STATUS
            } else {
                live & !written
            };
        }
    }
}
