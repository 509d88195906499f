//! Kernel steering of datagrams to their owner shard (issue 20): an eBPF program attached
//! to each UDP listen address's SO_REUSEPORT group (`SO_ATTACH_REUSEPORT_EBPF`) picks the
//! socket, that is the shard, from the SIP message itself instead of the kernel's hash of
//! the source address. It computes what [`crate::server`]'s `owner` would:
//!
//! - a response: the shard number our branch carries (`z9hG4bK-ss<N>.`, RFC 3261 §17.1.3
//!   matching happens on that shard);
//! - REGISTER: `hash(AOR) % shards` of the To URI's user (DESIGN.md §1, the FNV-1a hash
//!   and avalanche of [`crate::server::ownership`]);
//! - INVITE: the same hash of the Request-URI's user (the callee's bindings);
//! - other requests: the shard our Record-Route named (`;ss=<N>`, for in-dialog requests),
//!   else the Request-URI's hash (a CANCEL reaches its INVITE).
//!
//! The program is a hint, never the authority: whatever it cannot read the way the server
//! would (escaped users, an IPv6 literal without a user, more than 2 KiB before the header
//! it needs) it leaves to the kernel's hash (it returns an index past the last socket), and
//! the receiving shard still hands a datagram it does not own to its owner. Some hints are
//! wrong and cost that hand-off: a number the dial plan maps to an extension is steered by
//! the number (the server goes by the extension's user), and the first `;ss=` anywhere in
//! the first 2 KiB is believed (the server reads only the first Route's, in dialog).
//! What it saves is the hand-off: a wake-up of the owner shard and a copy per datagram.
//!
//! The program is assembled here (no compiler, no object file): straight-line code for each
//! message kind, reading the datagram in chunks of up to 256 bytes into the stack with
//! `bpf_skb_load_bytes`, each byte read guarded by `may_goto` (Linux 6.9+) so the verifier
//! accepts the scan loops without unrolling them. A kernel that refuses it (older, or no
//! CAP_BPF) leaves steering off; the server works the same, with more hand-offs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Bytes of a datagram the program looks at (the headers it needs come first).
const SCAN_LIMIT: i32 = 2048;
/// What the program returns when it cannot tell: past any socket index, so the kernel
/// falls back to its hash of the source.
const FALLBACK: i32 = -1;

// ---- eBPF instruction encoding (linux/bpf.h, Documentation/bpf/standardization) ----

const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_ST: u8 = 0x02;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_B: u8 = 0x10;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;

const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const MUL: u8 = 0x20;
const OR: u8 = 0x40;
const AND: u8 = 0x50;
const RSH: u8 = 0x70;
const MOD: u8 = 0x90;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;

const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JGE: u8 = 0x30;
const JNE: u8 = 0x50;
const JLT: u8 = 0xa0;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `may_goto`: jumps when the verifier-inserted loop budget is spent, else falls through.
const JCOND: u8 = 0xe0;

const HELPER_SKB_LOAD_BYTES: i32 = 26;
const BPF_JLE: u8 = 0xb0;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
/// The Request-URI's shard, while the program looks for an `;ss=`.
const SAVED: u8 = 5;
/// The scratch buffer (a per-CPU array map's value) holding the datagram's first bytes.
const BUFFER: u8 = 6;
/// Offset in the datagram of the next byte to read.
const POS: u8 = 7;
/// Bytes of the datagram in the buffer (1 to [`SCAN_LIMIT`]).
const LEN: u8 = 8;
/// The hash being computed, or a number being read.
const ACC: u8 = 9;
const FP: u8 = 10;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
/// `ld_imm64` source register marking the immediate as a map's file descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;

#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// A jump target, resolved when the program is finished.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Label(usize);

/// A tiny assembler: instructions, labels and the jumps waiting for them.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        });
    }

    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, l: Label) {
        debug_assert!(self.labels[l.0].is_none(), "label bound twice");
        self.labels[l.0] = Some(self.insns.len());
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.emit(code, dst, src, 0, imm);
    }

    /// `dst op= imm` (64-bit).
    fn alu_k(&mut self, op: u8, dst: u8, imm: i32) {
        self.emit(BPF_ALU64 | op | BPF_K, dst, 0, 0, imm);
    }

    /// `dst op= src` (64-bit).
    fn alu_x(&mut self, op: u8, dst: u8, src: u8) {
        self.emit(BPF_ALU64 | op | BPF_X, dst, src, 0, 0);
    }

    /// `dst = imm64` (two instruction slots).
    fn ld_imm64(&mut self, dst: u8, v: u64) {
        self.emit(BPF_LD | BPF_DW | BPF_IMM, dst, 0, 0, v as u32 as i32);
        self.emit(0, 0, 0, 0, (v >> 32) as u32 as i32);
    }

    /// `if dst op imm goto to`.
    fn jmp_k(&mut self, op: u8, dst: u8, imm: i32, to: Label) {
        self.jump(BPF_JMP | op | BPF_K, dst, 0, imm, to);
    }

    /// `if dst op src goto to`.
    fn jmp_x(&mut self, op: u8, dst: u8, src: u8, to: Label) {
        self.jump(BPF_JMP | op | BPF_X, dst, src, 0, to);
    }

    fn goto(&mut self, to: Label) {
        self.jump(BPF_JMP | JA, 0, 0, 0, to);
    }

    fn ret(&mut self, v: i32) {
        self.alu_k(MOV, R0, v);
        self.emit(BPF_JMP | EXIT, 0, 0, 0, 0);
    }

    fn finish(mut self) -> Vec<Insn> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].expect("label never bound") as i64;
            self.insns[at].off = i16::try_from(target - at as i64 - 1).expect("jump too far");
        }
        self.insns
    }
}

/// The program's pieces: how to read the next byte and match what the server matches.
struct Gen {
    a: Asm,
    shards: i32,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Gen {
    /// `R0 = datagram[POS++]`; to `end` past the datagram's first [`SCAN_LIMIT`] bytes
    /// (or when the verifier's loop budget is spent). Clobbers R1 and R2.
    fn next_byte(&mut self, end: Label) {
        let a = &mut self.a;
        a.jump(BPF_JMP | JCOND, 0, 0, 0, end); // may_goto end
        a.jmp_x(JGE, POS, LEN, end);
        // R0 = buffer[POS & (SCAN_LIMIT - 1)]: the mask bounds the offset for the verifier;
        // POS < LEN <= SCAN_LIMIT, so it changes nothing.
        a.alu_x(MOV, R1, POS);
        a.alu_k(AND, R1, SCAN_LIMIT - 1);
        a.alu_x(MOV, R2, BUFFER);
        a.alu_x(ADD, R2, R1);
        a.emit(BPF_LDX | BPF_MEM | BPF_B, R0, R2, 0, 0);
        a.alu_k(ADD, POS, 1);
    }

    /// Jumps to `to` when R0 is `c` (letters in either case when `fold`). Clobbers R1.
    fn if_byte(&mut self, c: u8, fold: bool, to: Label) {
        if fold && c.is_ascii_alphabetic() {
            self.a.alu_x(MOV, R1, R0);
            self.a.alu_k(OR, R1, 0x20);
            self.a.jmp_k(JEQ, R1, c.to_ascii_lowercase() as i32, to);
        } else {
            self.a.jmp_k(JEQ, R0, c as i32, to);
        }
    }

    /// Jumps to `to` unless R0 is `c` (letters in either case when `fold`). Clobbers R1.
    fn unless_byte(&mut self, c: u8, fold: bool, to: Label) {
        if fold && c.is_ascii_alphabetic() {
            self.a.alu_x(MOV, R1, R0);
            self.a.alu_k(OR, R1, 0x20);
            self.a.jmp_k(JNE, R1, c.to_ascii_lowercase() as i32, to);
        } else {
            self.a.jmp_k(JNE, R0, c as i32, to);
        }
    }

    /// Reads `s` exactly; to `fail` on the first byte that differs.
    fn expect(&mut self, s: &[u8], fold: bool, fail: Label) {
        for &c in s {
            self.next_byte(fail);
            self.unless_byte(c, fold, fail);
        }
    }

    /// Reads on until just past the first `s` (whose first byte occurs once in it).
    fn find(&mut self, s: &[u8], fold: bool, end: Label) {
        debug_assert!(!s[1..].contains(&s[0]));
        let start = self.a.label();
        let first = self.a.label();
        self.a.bind(start);
        self.next_byte(end);
        self.unless_byte(s[0], fold, start);
        self.a.bind(first);
        for &c in &s[1..] {
            self.next_byte(end);
            self.if_byte(s[0], fold, first);
            self.unless_byte(c, fold, start);
        }
    }

    /// Reads a decimal number (at least one digit, ended by any other byte) and returns it
    /// when it is a shard's number; to `fail` when there is none or it is too large.
    fn return_shard_number(&mut self, fail: Label) {
        let digit = self.a.label();
        let done = self.a.label();
        self.next_byte(fail);
        self.a.jmp_k(JLT, R0, b'0' as i32, fail);
        self.a.jmp_k(JGT, R0, b'9' as i32, fail);
        self.a.alu_x(MOV, ACC, R0);
        self.a.alu_k(SUB, ACC, b'0' as i32);
        self.a.bind(digit);
        self.next_byte(done);
        self.a.jmp_k(JLT, R0, b'0' as i32, done);
        self.a.jmp_k(JGT, R0, b'9' as i32, done);
        self.a.jmp_k(JGE, ACC, 1 << 16, fail);
        self.a.alu_k(MUL, ACC, 10);
        self.a.alu_x(ADD, ACC, R0);
        self.a.alu_k(SUB, ACC, b'0' as i32);
        self.a.goto(digit);
        self.a.bind(done);
        self.a.jmp_k(JGE, ACC, self.shards, fail);
        self.return_acc();
    }

    /// `ACC = fnv(ACC, R0)`. Clobbers R1.
    fn fnv_byte(&mut self) {
        self.a.alu_x(XOR, ACC, R0);
        self.a.ld_imm64(R1, FNV_PRIME);
        self.a.alu_x(MUL, ACC, R1);
    }

    /// Reads `sip:user@` or `sips:user@` (scheme in either case) and leaves the owner shard
    /// of that user's AOR in ACC, as `ownership::aor_hash` computes it. To `fail` for
    /// another scheme, a URI without a user, an escaped user (the server unescapes it) or a
    /// password.
    fn uri_user_shard(&mut self, fail: Label) {
        self.expect(b"si", true, fail);
        self.uri_user_shard_after_si(fail, false);
    }

    /// [`Gen::uri_user_shard`] for a Request-URI (ended by a space): a URI without a user
    /// gives the shard of its host (lowercased, as `aor_hash` does), unless it is an IPv6
    /// literal.
    fn request_uri_shard(&mut self, fail: Label) {
        self.expect(b"si", true, fail);
        self.uri_user_shard_after_si(fail, true);
    }

    /// [`Gen::uri_user_shard`] with the scheme's `si` already read; with `host`, a
    /// Request-URI without a user gives its host's shard.
    fn uri_user_shard_after_si(&mut self, fail: Label, host: bool) {
        const HOST_HASH: u8 = R3;
        let sips = self.a.label();
        let user = self.a.label();
        self.expect(b"p", true, fail);
        self.next_byte(fail);
        self.a.ld_imm64(ACC, FNV_OFFSET);
        self.a.jmp_k(JEQ, R0, b':' as i32, user);
        self.unless_byte(b's', true, fail);
        self.next_byte(fail);
        self.unless_byte(b':', false, fail);
        self.a.bind(sips);
        self.a.alu_k(MOV, R0, b'S' as i32);
        self.fnv_byte();
        let first = self.a.label();
        self.a.goto(first);
        self.a.bind(user);
        self.a.alu_k(MOV, R0, b's' as i32);
        self.fnv_byte();
        self.a.bind(first);
        // The host's hash goes along (the scheme's, then `@`, then the bytes lowercased)
        // until an `@` says these bytes were the user.
        self.a.alu_x(MOV, HOST_HASH, ACC);
        self.a.alu_k(XOR, HOST_HASH, b'@' as i32);
        self.a.ld_imm64(R1, FNV_PRIME);
        self.a.alu_x(MUL, HOST_HASH, R1);
        let byte = self.a.label();
        let at = self.a.label();
        let host_end = self.a.label();
        let lower = self.a.label();
        self.a.bind(byte);
        self.next_byte(fail);
        self.a.jmp_k(JEQ, R0, b'@' as i32, at);
        let ends_host: &[u8] = if host { b": ;?" } else { b"" };
        for &c in ends_host {
            self.a.jmp_k(JEQ, R0, c as i32, host_end);
        }
        for c in [
            b'%', b':', b'>', b'<', b'"', b' ', b'\t', b'\r', b'\n', b'?', b',', b'[',
        ] {
            if !ends_host.contains(&c) {
                self.a.jmp_k(JEQ, R0, c as i32, fail);
            }
        }
        self.fnv_byte();
        if host {
            self.a.alu_x(MOV, R4, R0);
            self.a.jmp_k(JLT, R4, b'A' as i32, lower);
            self.a.jmp_k(JGT, R4, b'Z' as i32, lower);
            self.a.alu_k(OR, R4, 0x20);
            self.a.bind(lower);
            self.a.alu_x(XOR, HOST_HASH, R4);
            self.a.ld_imm64(R1, FNV_PRIME);
            self.a.alu_x(MUL, HOST_HASH, R1);
        } else {
            self.a.bind(lower);
        }
        self.a.goto(byte);
        self.a.bind(host_end);
        if host {
            // No user so far: it is the host if no `@` follows before the Request-URI ends
            // (a user may hold `;` or `?`; `:` may start a password).
            let scan = self.a.label();
            let is_host = self.a.label();
            self.a.jmp_k(JEQ, R0, b' ' as i32, is_host);
            self.a.bind(scan);
            self.next_byte(fail);
            self.a.jmp_k(JEQ, R0, b' ' as i32, is_host);
            self.a.jmp_k(JEQ, R0, b'@' as i32, fail);
            self.a.jmp_k(JEQ, R0, b'\r' as i32, fail);
            self.a.jmp_k(JEQ, R0, b'\n' as i32, fail);
            self.a.goto(scan);
            self.a.bind(is_host);
            self.a.alu_x(MOV, ACC, HOST_HASH);
            self.a.goto(at);
        }
        self.a.bind(at);
        // The avalanche, then `% shards`.
        self.a.alu_x(MOV, R1, ACC);
        self.a.alu_k(RSH, R1, 33);
        self.a.alu_x(XOR, ACC, R1);
        self.a.ld_imm64(R1, 0xff51_afd7_ed55_8ccd);
        self.a.alu_x(MUL, ACC, R1);
        self.a.alu_x(MOV, R1, ACC);
        self.a.alu_k(RSH, R1, 33);
        self.a.alu_x(XOR, ACC, R1);
        self.a.alu_k(MOD, ACC, self.shards);
    }

    fn return_acc(&mut self) {
        self.a.alu_x(MOV, R0, ACC);
        self.a.emit(BPF_JMP | EXIT, 0, 0, 0, 0);
    }
}

/// The steering program for `shards` sockets (shard `i` is the `i`-th socket bound to the
/// address: the group's index order).
fn program(shards: usize, map_fd: i32, control_fd: i32) -> Vec<Insn> {
    let mut g = Gen {
        a: Asm::default(),
        shards: shards as i32,
    };
    let fallback = g.a.label();
    let request = g.a.label();
    let register = g.a.label();
    let invite = g.a.label();
    let response = g.a.label();
    let other = g.a.label();

    // Prologue: the datagram's first bytes (up to SCAN_LIMIT) copied into the scratch
    // buffer, so the scan loops read memory and call nothing.
    g.a.alu_x(MOV, POS, R1); // the context, until the copy is made
                             // Consolidation (shard/consolidation.rs): while the control word is not 0 every shard
                             // runs on shard 0's thread, and every datagram goes to socket 0 (one receive call per
                             // wake-up instead of one per socket; the receiving shard hands on what it does not
                             // own, on the same thread).
    let steer = g.a.label();
    g.a.emit(BPF_ST | BPF_MEM | BPF_W, FP, 0, -4, 0);
    g.a.alu_x(MOV, R2, FP);
    g.a.alu_k(ADD, R2, -4);
    g.a.emit(
        BPF_LD | BPF_DW | BPF_IMM,
        R1,
        BPF_PSEUDO_MAP_FD,
        0,
        control_fd,
    );
    g.a.emit(0, 0, 0, 0, 0);
    g.a.emit(BPF_JMP | CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM);
    g.a.jmp_k(JEQ, R0, 0, steer);
    g.a.emit(BPF_LDX | BPF_MEM | BPF_W, R1, R0, 0, 0);
    g.a.jmp_k(JEQ, R1, 0, steer);
    g.a.ret(0);
    g.a.bind(steer);
    g.a.emit(BPF_ST | BPF_MEM | BPF_W, FP, 0, -4, 0);
    g.a.alu_x(MOV, R2, FP);
    g.a.alu_k(ADD, R2, -4);
    g.a.emit(BPF_LD | BPF_DW | BPF_IMM, R1, BPF_PSEUDO_MAP_FD, 0, map_fd);
    g.a.emit(0, 0, 0, 0, 0);
    g.a.emit(BPF_JMP | CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM);
    g.a.jmp_k(JEQ, R0, 0, fallback);
    g.a.alu_x(MOV, BUFFER, R0);
    // skb->len. ACC = len - len, POS later: 0, but not a constant to the verifier. A
    // constant offset would be "precise" after the first comparison it decides, and the
    // verifier would then walk every byte offset of every scan loop as a state of its own
    // (past its limit of a million instructions); an unknown one is widened at `may_goto`
    // and the loops converge. (Taken before LEN is clamped, where it may become a constant.)
    g.a.emit(BPF_LDX | BPF_MEM | BPF_W, LEN, POS, 0, 0);
    g.a.alu_x(MOV, ACC, LEN);
    g.a.alu_x(SUB, ACC, LEN);
    let short = g.a.label();
    g.a.jmp_k(BPF_JLE, LEN, SCAN_LIMIT, short);
    g.a.alu_k(MOV, LEN, SCAN_LIMIT);
    g.a.bind(short);
    g.a.jmp_k(JLT, LEN, 1, fallback);
    g.a.alu_x(MOV, R1, POS);
    g.a.alu_k(MOV, R2, 0);
    g.a.alu_x(MOV, R3, BUFFER);
    g.a.alu_x(MOV, R4, LEN);
    g.a.emit(BPF_JMP | CALL, 0, 0, 0, HELPER_SKB_LOAD_BYTES);
    g.a.jmp_k(JNE, R0, 0, fallback);
    g.a.alu_x(MOV, POS, ACC);

    // The first byte tells the kind: SIP/2.0 (a response), REGISTER, INVITE or another
    // method.
    g.next_byte(fallback);
    g.a.jmp_k(JEQ, R0, b'R' as i32, register);
    g.a.jmp_k(JEQ, R0, b'I' as i32, invite);
    g.a.jmp_k(JEQ, R0, b'S' as i32, response);
    g.a.goto(request);

    // A response: our branch says which shard sent the request.
    g.a.bind(response);
    g.expect(b"IP/2.0 ", false, request);
    g.find(b"z9hG4bK-ss", false, fallback);
    g.return_shard_number(fallback);

    // REGISTER: the To URI's user.
    g.a.bind(register);
    g.expect(b"EGISTER ", false, request);
    {
        let line = g.a.label();
        let line_start = g.a.label();
        let spaces = g.a.label();
        let value = g.a.label();
        g.a.bind(line);
        g.next_byte(fallback);
        g.a.jmp_k(JNE, R0, b'\n' as i32, line);
        g.a.bind(line_start);
        g.next_byte(fallback);
        g.a.jmp_k(JEQ, R0, b'\n' as i32, line_start);
        g.unless_byte(b't', true, line);
        g.next_byte(fallback);
        g.a.jmp_k(JEQ, R0, b':' as i32, value);
        g.a.jmp_k(JEQ, R0, b' ' as i32, spaces);
        g.a.jmp_k(JEQ, R0, b'\t' as i32, spaces);
        g.a.jmp_k(JEQ, R0, b'\n' as i32, line_start);
        g.unless_byte(b'o', true, line);
        g.next_byte(fallback);
        g.a.jmp_k(JEQ, R0, b':' as i32, value);
        g.a.jmp_k(JEQ, R0, b'\n' as i32, line_start);
        g.a.jmp_k(JEQ, R0, b' ' as i32, spaces);
        g.a.jmp_k(JNE, R0, b'\t' as i32, line);
        g.a.bind(spaces);
        g.next_byte(fallback);
        g.a.jmp_k(JEQ, R0, b' ' as i32, spaces);
        g.a.jmp_k(JEQ, R0, b'\t' as i32, spaces);
        g.a.jmp_k(JEQ, R0, b'\n' as i32, line_start);
        g.a.jmp_k(JNE, R0, b':' as i32, line);
        g.a.bind(value);
        // The URI: after `<` (past a quoted display name), or right away (addr-spec). A
        // token display name (`Bob <sip:...>`) is looked past to its `<` unless it starts
        // with an `s`, which is read as the scheme (and fails: the kernel's hash decides).
        let blank = g.a.label();
        let quoted = g.a.label();
        let angle = g.a.label();
        let uri = g.a.label();
        g.a.bind(blank);
        g.next_byte(fallback);
        g.a.jmp_k(JEQ, R0, b' ' as i32, blank);
        g.a.jmp_k(JEQ, R0, b'\t' as i32, blank);
        g.a.jmp_k(JEQ, R0, b'"' as i32, quoted);
        g.a.jmp_k(JEQ, R0, b'<' as i32, uri);
        g.unless_byte(b's', true, angle);
        g.expect(b"i", true, fallback);
        g.uri_user_shard_after_si(fallback, false);
        g.return_acc();
        g.a.bind(quoted);
        g.find(b"\"", false, fallback);
        g.a.bind(angle);
        g.find(b"<", false, fallback);
        g.a.bind(uri);
        g.uri_user_shard(fallback);
        g.return_acc();
    }

    // INVITE: the Request-URI's user (a re-INVITE's `;ss=` is not looked for: the server
    // hands the few of them on).
    g.a.bind(invite);
    g.expect(b"NVITE ", false, request);
    g.request_uri_shard(fallback);
    g.return_acc();

    // Another method: `;ss=` of our Record-Route (ACK, BYE, in-dialog requests), else the
    // Request-URI's user (CANCEL, initial MESSAGE, SUBSCRIBE...).
    g.a.bind(request);
    g.find(b" ", false, fallback);
    let store = g.a.label();
    g.request_uri_shard(other);
    g.a.goto(store);
    g.a.bind(other);
    g.a.alu_k(MOV, ACC, FALLBACK);
    g.a.bind(store);
    g.a.alu_x(MOV, SAVED, ACC);
    let saved = g.a.label();
    g.find(b";ss=", false, saved);
    g.return_shard_number(saved);
    g.a.bind(saved);
    g.a.alu_x(MOV, R0, SAVED);
    g.a.emit(BPF_JMP | EXIT, 0, 0, 0, 0);

    g.a.bind(fallback);
    g.a.ret(FALLBACK);
    g.a.finish()
}

// ---- Loading and attaching (bpf(2), socket(7)) ----

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TEST_RUN: libc::c_int = 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// A loaded steering program.
pub struct SteeringProgram {
    fd: OwnedFd,
    /// The control word's map (an array of one u32): not 0 sends everything to socket 0.
    control: OwnedFd,
    /// Instructions in the program.
    pub len: usize,
}

impl SteeringProgram {
    /// Assembles the program for `shards` shards and has the kernel verify and load it.
    /// The error carries the verifier's last lines when it refused the program
    /// (SIPSHARD_BPF_LOG=FILE writes its whole log there).
    pub fn load(shards: usize) -> io::Result<SteeringProgram> {
        let map = scratch_map()?;
        let control = array_map(4, 1)?;
        let insns = program(shards, map.as_raw_fd(), control.as_raw_fd());
        Self::load_insns(insns, control)
    }

    /// Sends every datagram to socket 0 (`true`: all shards run on shard 0's thread) or to
    /// its owner again (`false`). Takes effect for the next datagram the kernel receives.
    pub fn set_all_to_first(&self, on: bool) -> io::Result<()> {
        let key = 0u32;
        let value = u32::from(on);
        let mut attr = MapUpdateAttr {
            map_fd: self.control.as_raw_fd() as u32,
            pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0, // BPF_ANY
        };
        // SAFETY: bpf(BPF_MAP_UPDATE_ELEM) reads `attr` and the key and value it points at,
        // all alive for the call.
        if unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn load_insns(insns: Vec<Insn>, control: OwnedFd) -> io::Result<SteeringProgram> {
        let license = b"MIT\0";
        let log_len = if std::env::var_os("SIPSHARD_BPF_LOG").is_some() {
            200 << 20
        } else {
            1 << 20
        };
        let mut log = vec![0u8; log_len];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            ..Default::default()
        };
        // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` (size given) and the instruction and
        // license buffers it points to, all alive for the call.
        let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) };
        if fd >= 0 {
            // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            return Ok(SteeringProgram {
                fd,
                control,
                len: insns.len(),
            });
        }
        let err = io::Error::last_os_error();
        if !matches!(
            err.raw_os_error(),
            Some(libc::EINVAL | libc::EACCES | libc::E2BIG)
        ) {
            return Err(err);
        }
        // Load again with the verifier's log, to say why.
        let mut attr = ProgLoadAttr {
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            ..attr
        };
        // SAFETY: as above; the log buffer is writable and `log_size` long.
        let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) };
        if fd >= 0 {
            // SAFETY: as above.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        if let Some(path) = std::env::var_os("SIPSHARD_BPF_LOG") {
            let _ = std::fs::write(path, text.as_bytes());
        }
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(io::Error::new(
            err.kind(),
            format!("{err}: {}", tail.join(" | ")),
        ))
    }

    /// Attaches the program to the SO_REUSEPORT group `socket` belongs to.
    pub fn attach(&self, socket: &impl AsRawFd) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: setsockopt reads one c_int (the program's descriptor) from a live local.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_EBPF,
                &fd as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Runs the program on `payload` as the kernel would on a datagram's payload
    /// (BPF_PROG_TEST_RUN, `repeat` times): the socket index it returns (u32::MAX for
    /// "the kernel's hash") and the mean run time in ns.
    pub fn test_run(&self, payload: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
        // The test run takes a frame and strips its Ethernet header: the program then sees
        // what follows, here the payload itself (an ethertype of no protocol, so the kernel
        // looks for no IP header in it).
        let mut frame = vec![0u8; 14];
        frame[12] = 0x88;
        frame[13] = 0xb5;
        frame.extend_from_slice(payload);
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: the kernel reads `frame` (size given) and writes retval and duration
        // into `attr`, which outlives the call.
        let r = unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((attr.retval, attr.duration))
    }
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// An array map of `entries` zeroed values of `value_size` bytes.
fn array_map(value_size: u32, entries: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: entries,
        map_flags: 0,
    };
    // SAFETY: bpf(BPF_MAP_CREATE) reads `attr` (size given), alive for the call.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The program's scratch buffer: a per-CPU array of one [`SCAN_LIMIT`]-byte value (a
/// program runs on one CPU without preemption, so one buffer per CPU is enough). The loaded
/// program holds its own reference: the descriptor may close once it is loaded.
fn scratch_map() -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
        key_size: 4,
        value_size: SCAN_LIMIT as u32,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: bpf(BPF_MAP_CREATE) reads `attr` (size given), alive for the call.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// bpf(2) with an attribute block of type `T`.
///
/// # Safety
/// `attr` must be the attribute layout `cmd` expects, its pointers valid for the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> libc::c_long {
    // SAFETY: forwarded from the caller.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    }
}
