/*! Baseline JPEG decoding that gives the pixels PyTorch users' loaders give.

PIL (and torchvision) decode JPEGs with libjpeg-turbo's defaults: the accurate integer inverse DCT
(`JDCT_ISLOW`, the Loeffler-Ligtenberg-Moschytz algorithm with 13-bit constants, `jidctint.c`),
"fancy" (triangle-filter) chroma upsampling (`jdsample.c`) and its fixed-point YCbCr to RGB tables
(`jdcolor.c`). This module implements exactly these steps for baseline (sequential, Huffman,
8-bit) files with full-size or 2x horizontally (4:2:2) or 2x2 (4:2:0) subsampled chroma, and
grayscale; on the CIFAR-10 JPEGs of the shared data its output equals PIL's byte for byte.
Other files (progressive, arithmetic-coded, Adobe/RGB/CMYK, other subsamplings) return `None`, and
the caller falls back to the `image` crate, whose decoder rounds differently (a few levels on a
fifth of the values).

Written from the JPEG standard (ITU T.81) and the documented behaviour of libjpeg's steps; no
code was copied.
*/

/// Decodes `bytes`; `Ok(Some((width, height, rgb)))` with HWC RGB bytes, `Ok(None)` when the file
/// is not one this decoder reproduces exactly, `Err` when it is corrupt.
pub fn decode(bytes: &[u8]) -> Result<Option<(usize, usize, Vec<u8>)>, String> {
    let mut d = Decoder {
        data: bytes,
        pos: 0,
        qt: [[0; 64]; 4],
        dc: Default::default(),
        ac: Default::default(),
        comps: Vec::new(),
        width: 0,
        height: 0,
        hmax: 1,
        vmax: 1,
        restart: 0,
        adobe: false,
        frame: false,
        bits: 0,
        nbits: 0,
        marker_hit: false,
    };
    d.run()
}

/// Zigzag position -> natural (row-major) position, with 16 extra entries so that a corrupt run
/// length cannot index past the block (libjpeg does the same).
const NATURAL: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

#[derive(Debug, Clone, Default)]
struct Huffman {
    /// (code length, symbol) for each 9-bit prefix; length 0 = longer code.
    fast: Vec<(u8, u8)>,
    /// Largest code of each length 1..=16 (-1 when none), smallest code, index of its symbol.
    maxcode: [i32; 18],
    mincode: [i32; 17],
    valptr: [usize; 17],
    symbols: Vec<u8>,
}

const FAST_BITS: usize = 9;

impl Huffman {
    fn new(counts: &[u8; 16], symbols: Vec<u8>) -> Result<Self, String> {
        let mut h = Huffman { symbols, fast: vec![(0, 0); 1 << FAST_BITS], ..Default::default() };
        let mut code = 0i32;
        let mut k = 0usize;
        for len in 1..=16 {
            let n = counts[len - 1] as usize;
            h.valptr[len] = k;
            h.mincode[len] = code;
            for _ in 0..n {
                if len <= FAST_BITS {
                    let shift = FAST_BITS - len;
                    for fill in 0..(1 << shift) {
                        h.fast[((code as usize) << shift) | fill] = (len as u8, h.symbols[k]);
                    }
                }
                code += 1;
                k += 1;
            }
            h.maxcode[len] = if n > 0 { code - 1 } else { -1 };
            if code > (1 << len) {
                return Err("bad Huffman table".into());
            }
            code <<= 1;
        }
        h.maxcode[17] = i32::MAX;
        Ok(h)
    }
}

/// A block of a scan: (component, block column, block row).
type BlockAt = (usize, usize, usize);

#[derive(Debug, Clone, Default)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks per line and block lines of the padded plane (whole MCUs).
    bw: usize,
    bh: usize,
    /// Decoded samples of the padded plane, `bw*8` x `bh*8`.
    plane: Vec<u8>,
    dc_pred: i32,
    td: usize,
    ta: usize,
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    qt: [[u16; 64]; 4],
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
    comps: Vec<Component>,
    width: usize,
    height: usize,
    hmax: usize,
    vmax: usize,
    restart: usize,
    adobe: bool,
    frame: bool,
    // Bit reader.
    bits: u64,
    nbits: u32,
    marker_hit: bool,
}

impl Decoder<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.data.get(self.pos).ok_or("truncated JPEG")?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<usize, String> {
        Ok(((self.byte()? as usize) << 8) | self.byte()? as usize)
    }

    fn segment(&mut self) -> Result<&[u8], String> {
        let len = self.u16()?;
        if len < 2 || self.pos + len - 2 > self.data.len() {
            return Err("bad JPEG segment length".into());
        }
        let s = &self.data[self.pos..self.pos + len - 2];
        self.pos += len - 2;
        Ok(s)
    }

    fn next_marker(&mut self) -> Result<u8, String> {
        loop {
            if self.byte()? != 0xFF {
                continue; // skip garbage, as libjpeg does (with a warning)
            }
            let mut m = self.byte()?;
            while m == 0xFF {
                m = self.byte()?;
            }
            if m != 0 {
                return Ok(m);
            }
        }
    }

    fn run(&mut self) -> Result<Option<(usize, usize, Vec<u8>)>, String> {
        if self.data.get(..2) != Some(&[0xFF, 0xD8]) {
            return Err("not a JPEG file".into());
        }
        self.pos = 2;
        loop {
            let m = self.next_marker()?;
            match m {
                0xD8 => {}
                0xD9 => break,
                0xC0 | 0xC1 => {
                    if !self.frame_header()? {
                        return Ok(None);
                    }
                }
                0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(None),
                0xC4 => self.huffman_tables()?,
                0xDB => self.quant_tables()?,
                0xDD => {
                    let s = self.segment()?;
                    if s.len() < 2 {
                        return Err("bad DRI segment".into());
                    }
                    self.restart = ((s[0] as usize) << 8) | s[1] as usize;
                }
                0xEE => {
                    let s = self.segment()?;
                    self.adobe |= s.starts_with(b"Adobe");
                }
                0xDA => {
                    if !self.frame || self.adobe {
                        return if self.frame { Ok(None) } else { Err("scan before frame".into()) };
                    }
                    self.scan()?;
                }
                0xD0..=0xD7 | 0x01 => {}
                _ => {
                    self.segment()?;
                }
            }
        }
        if !self.frame {
            return Err("JPEG without a frame".into());
        }
        self.output().map(Some)
    }

    /// Reads SOF0/SOF1; false when the frame is outside what this decoder reproduces.
    fn frame_header(&mut self) -> Result<bool, String> {
        let s = self.segment()?.to_vec();
        if s.len() < 6 {
            return Err("bad frame header".into());
        }
        let precision = s[0];
        self.height = ((s[1] as usize) << 8) | s[2] as usize;
        self.width = ((s[3] as usize) << 8) | s[4] as usize;
        let n = s[5] as usize;
        if s.len() < 6 + 3 * n || self.width == 0 || self.height == 0 {
            return Err("bad frame header".into());
        }
        if precision != 8 || !(n == 1 || n == 3) {
            return Ok(false);
        }
        self.comps = (0..n)
            .map(|i| {
                let c = &s[6 + 3 * i..9 + 3 * i];
                Component {
                    id: c[0],
                    h: (c[1] >> 4) as usize,
                    v: (c[1] & 15) as usize,
                    tq: (c[2] & 3) as usize,
                    ..Default::default()
                }
            })
            .collect();
        if self.comps.iter().any(|c| !(1..=4).contains(&c.h) || !(1..=4).contains(&c.v)) {
            return Err("bad sampling factors".into());
        }
        if n == 1 {
            // A single component is decoded as its own blocks, whatever its factors say.
            self.comps[0].h = 1;
            self.comps[0].v = 1;
        }
        self.hmax = self.comps.iter().map(|c| c.h).max().unwrap_or(1);
        self.vmax = self.comps.iter().map(|c| c.v).max().unwrap_or(1);
        // Exact paths: full size, h2v1 and h2v2 chroma; RGB-labelled components are not YCbCr.
        for c in &self.comps {
            let (fh, fv) = (self.hmax / c.h, self.vmax / c.v);
            if !self.hmax.is_multiple_of(c.h)
                || !self.vmax.is_multiple_of(c.v)
                || !matches!((fh, fv), (1, 1) | (2, 1) | (2, 2))
            {
                return Ok(false);
            }
        }
        if n == 3 && self.comps.iter().map(|c| c.id).eq([b'R', b'G', b'B']) {
            return Ok(false);
        }
        let mcux = self.width.div_ceil(8 * self.hmax);
        let mcuy = self.height.div_ceil(8 * self.vmax);
        for c in &mut self.comps {
            c.bw = mcux * c.h;
            c.bh = mcuy * c.v;
            c.plane = vec![0; c.bw * 8 * c.bh * 8];
        }
        self.frame = true;
        Ok(true)
    }

    fn huffman_tables(&mut self) -> Result<(), String> {
        let s = self.segment()?.to_vec();
        let mut p = 0;
        while p < s.len() {
            let (class, id) = (s[p] >> 4, (s[p] & 15) as usize);
            let counts: [u8; 16] = s.get(p + 1..p + 17).ok_or("bad DHT")?.try_into().expect("16");
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let symbols = s.get(p + 17..p + 17 + total).ok_or("bad DHT")?.to_vec();
            if id > 3 || class > 1 {
                return Err("bad DHT table id".into());
            }
            let h = Huffman::new(&counts, symbols)?;
            if class == 0 {
                self.dc[id] = Some(h);
            } else {
                self.ac[id] = Some(h);
            }
            p += 17 + total;
        }
        Ok(())
    }

    fn quant_tables(&mut self) -> Result<(), String> {
        let s = self.segment()?.to_vec();
        let mut p = 0;
        while p < s.len() {
            let (prec, id) = (s[p] >> 4, (s[p] & 15) as usize);
            if id > 3 {
                return Err("bad DQT table id".into());
            }
            p += 1;
            for (k, &nat) in NATURAL.iter().take(64).enumerate() {
                let v = if prec == 0 {
                    *s.get(p + k).ok_or("bad DQT")? as u16
                } else {
                    ((*s.get(p + 2 * k).ok_or("bad DQT")? as u16) << 8)
                        | *s.get(p + 2 * k + 1).ok_or("bad DQT")? as u16
                };
                self.qt[id][nat] = v;
            }
            p += if prec == 0 { 64 } else { 128 };
        }
        Ok(())
    }

    // --- entropy-coded data ---

    fn fill(&mut self) {
        while self.nbits <= 56 {
            let mut b = 0u8;
            if !self.marker_hit {
                match self.data.get(self.pos) {
                    Some(&0xFF) => match self.data.get(self.pos + 1) {
                        Some(0) => {
                            b = 0xFF;
                            self.pos += 2;
                        }
                        _ => self.marker_hit = true,
                    },
                    Some(&x) => {
                        b = x;
                        self.pos += 1;
                    }
                    None => self.marker_hit = true,
                }
            }
            // Past a marker, zeros are fed (libjpeg does the same after warning).
            self.bits |= (b as u64) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    fn get_bits(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.fill();
        }
        let v = (self.bits >> (64 - n)) as i32;
        self.bits <<= n;
        self.nbits -= n;
        v
    }

    fn decode_symbol(&mut self, h: &Huffman) -> Result<u8, String> {
        if self.nbits < 16 {
            self.fill();
        }
        let peek = (self.bits >> (64 - FAST_BITS)) as usize;
        let (len, sym) = h.fast[peek];
        if len > 0 {
            self.bits <<= len;
            self.nbits -= len as u32;
            return Ok(sym);
        }
        let mut code = self.get_bits(1);
        let mut len = 1;
        while code > h.maxcode[len] {
            code = (code << 1) | self.get_bits(1);
            len += 1;
            if len > 16 {
                return Err("corrupt JPEG data: bad Huffman code".into());
            }
        }
        Ok(h.symbols[h.valptr[len] + (code - h.mincode[len]) as usize])
    }

    fn extend(v: i32, s: u32) -> i32 {
        if s == 0 {
            0
        } else if v < (1 << (s - 1)) {
            v - (1 << s) + 1
        } else {
            v
        }
    }

    fn reset_bits(&mut self) {
        self.bits = 0;
        self.nbits = 0;
        self.marker_hit = false;
    }

    fn scan(&mut self) -> Result<(), String> {
        let s = self.segment()?.to_vec();
        let n = *s.first().ok_or("bad scan header")? as usize;
        if s.len() < 1 + 2 * n + 3 || n == 0 || n > 4 {
            return Err("bad scan header".into());
        }
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let (cid, t) = (s[1 + 2 * i], s[2 + 2 * i]);
            let ci =
                self.comps.iter().position(|c| c.id == cid).ok_or("scan of unknown component")?;
            self.comps[ci].td = (t >> 4) as usize & 3;
            self.comps[ci].ta = (t & 15) as usize & 3;
            ids.push(ci);
        }
        for c in &mut self.comps {
            c.dc_pred = 0;
        }
        self.reset_bits();
        let mut block = [0i16; 64];
        let mcus: Vec<Vec<BlockAt>> = if n == 1 {
            // Non-interleaved: one block per MCU over the component's own block grid.
            let ci = ids[0];
            let c = &self.comps[ci];
            let cw = (self.width * c.h).div_ceil(self.hmax).div_ceil(8);
            let ch = (self.height * c.v).div_ceil(self.vmax).div_ceil(8);
            (0..ch).flat_map(|by| (0..cw).map(move |bx| vec![(ci, bx, by)])).collect()
        } else {
            let mcux = self.width.div_ceil(8 * self.hmax);
            let mcuy = self.height.div_ceil(8 * self.vmax);
            let comps: Vec<(usize, usize, usize)> =
                ids.iter().map(|&ci| (ci, self.comps[ci].h, self.comps[ci].v)).collect();
            (0..mcuy)
                .flat_map(|my| {
                    let comps = comps.clone();
                    (0..mcux).map(move |mx| {
                        let mut blocks = Vec::new();
                        for &(ci, h, v) in &comps {
                            for y in 0..v {
                                for x in 0..h {
                                    blocks.push((ci, mx * h + x, my * v + y));
                                }
                            }
                        }
                        blocks
                    })
                })
                .collect()
        };
        for (i, blocks) in mcus.iter().enumerate() {
            if self.restart > 0 && i > 0 && i % self.restart == 0 {
                // Expect RSTn: drop the buffered bits, skip to after the marker.
                self.reset_bits();
                let m = self.next_marker()?;
                if !(0xD0..=0xD7).contains(&m) {
                    return Err("corrupt JPEG data: missing restart marker".into());
                }
                for c in &mut self.comps {
                    c.dc_pred = 0;
                }
            }
            for &(ci, bx, by) in blocks {
                self.decode_block(ci, &mut block)?;
                let c = &mut self.comps[ci];
                let stride = c.bw * 8;
                let q = &self.qt[c.tq];
                idct_islow(&block, q, &mut c.plane[by * 8 * stride + bx * 8..], stride);
            }
        }
        // Leave the position after the scan's data (at its marker).
        if self.marker_hit || self.nbits > 0 {
            while self.pos < self.data.len() {
                if self.data[self.pos] == 0xFF
                    && self
                        .data
                        .get(self.pos + 1)
                        .is_some_and(|&b| b != 0 && !(0xD0..=0xD7).contains(&b))
                {
                    break;
                }
                self.pos += 1;
            }
        }
        self.reset_bits();
        Ok(())
    }

    fn decode_block(&mut self, ci: usize, block: &mut [i16; 64]) -> Result<(), String> {
        *block = [0; 64];
        let (td, ta) = (self.comps[ci].td, self.comps[ci].ta);
        let dc = self.dc[td].take().ok_or("missing DC Huffman table")?;
        let t = self.decode_symbol(&dc);
        self.dc[td] = Some(dc);
        let t = t? as u32;
        let diff = Self::extend(self.get_bits(t), t);
        let c = &mut self.comps[ci];
        c.dc_pred = c.dc_pred.wrapping_add(diff);
        block[0] = c.dc_pred as i16;
        let ac = self.ac[ta].take().ok_or("missing AC Huffman table")?;
        let mut k = 1;
        let mut result = Ok(());
        while k < 64 {
            let rs = match self.decode_symbol(&ac) {
                Ok(v) => v,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
            if s == 0 {
                if r == 15 {
                    k += 16;
                    continue;
                }
                break;
            }
            k += r;
            let v = Self::extend(self.get_bits(s), s);
            block[NATURAL[k.min(79)]] = v as i16;
            k += 1;
        }
        self.ac[ta] = Some(ac);
        result
    }

    // --- upsampling and colour conversion ---

    fn output(&self) -> Result<(usize, usize, Vec<u8>), String> {
        let (w, h) = (self.width, self.height);
        let mut out = vec![0u8; w * h * 3];
        if self.comps.len() == 1 {
            let c = &self.comps[0];
            let stride = c.bw * 8;
            for y in 0..h {
                for x in 0..w {
                    let v = c.plane[y * stride + x];
                    out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[v, v, v]);
                }
            }
            return Ok((w, h, out));
        }
        let full: Vec<Vec<u8>> = self.comps.iter().map(|c| self.upsample(c)).collect();
        let tables = ColorTables::new();
        for (i, px) in out.chunks_exact_mut(3).enumerate() {
            let (y, cb, cr) = (full[0][i] as i32, full[1][i] as usize, full[2][i] as usize);
            px[0] = clamp(y + tables.cr_r[cr]);
            px[1] = clamp(y + ((tables.cb_g[cb] + tables.cr_g[cr]) >> 16));
            px[2] = clamp(y + tables.cb_b[cb]);
        }
        Ok((w, h, out))
    }

    /// The component's samples at full resolution, `width x height`.
    fn upsample(&self, c: &Component) -> Vec<u8> {
        let (w, h) = (self.width, self.height);
        let stride = c.bw * 8;
        // Real (not padding) samples of the component.
        let dw = (w * c.h).div_ceil(self.hmax);
        let dh = (h * c.v).div_ceil(self.vmax);
        let at = |x: usize, y: usize| c.plane[y * stride + x] as i32;
        let mut out = vec![0u8; w * h];
        match (self.hmax / c.h, self.vmax / c.v) {
            (1, 1) => {
                for y in 0..h {
                    out[y * w..(y + 1) * w].copy_from_slice(&c.plane[y * stride..y * stride + w]);
                }
            }
            (2, 1) => {
                let mut row = vec![0u8; 2 * dw];
                for y in 0..h {
                    h2v1_fancy(&c.plane[y * stride..y * stride + dw], &mut row);
                    out[y * w..(y + 1) * w].copy_from_slice(&row[..w]);
                }
            }
            _ => {
                // 2x2: each output row blends its input row (3/4) with the nearest other row
                // (1/4; the edge rows are repeated), then columns likewise.
                if dw <= 2 {
                    // libjpeg upsamples such narrow components by replication.
                    for oy in 0..h {
                        for ox in 0..w {
                            out[oy * w + ox] = at(ox / 2, oy / 2) as u8;
                        }
                    }
                    return out;
                }
                let mut row = vec![0u8; 2 * dw];
                let mut sums = vec![0i32; dw];
                for oy in 0..h {
                    let iy = oy / 2;
                    let other =
                        if oy % 2 == 0 { iy.saturating_sub(1) } else { (iy + 1).min(dh - 1) };
                    for (x, s) in sums.iter_mut().enumerate() {
                        *s = at(x, iy) * 3 + at(x, other);
                    }
                    h2v2_fancy_row(&sums, &mut row);
                    out[oy * w..(oy + 1) * w].copy_from_slice(&row[..w]);
                }
            }
        }
        out
    }
}

fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// libjpeg's h2v1 "fancy" upsampling of one row: each output sample is 3/4 of the nearer input
/// sample and 1/4 of the next nearest, rounded alternately down and up.
fn h2v1_fancy(input: &[u8], out: &mut [u8]) {
    let n = input.len();
    if n <= 2 {
        for (i, &v) in input.iter().enumerate() {
            out[2 * i] = v;
            out[2 * i + 1] = v;
        }
        return;
    }
    let v = |i: usize| input[i] as i32;
    out[0] = input[0];
    out[1] = ((v(0) * 3 + v(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        let c = v(i) * 3;
        out[2 * i] = ((c + v(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((c + v(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((v(n - 1) * 3 + v(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = input[n - 1];
}

/// The horizontal half of libjpeg's h2v2 "fancy" upsampling, on vertically blended column sums
/// (`3 * near + far`, so 4x the sample): output = (3 * this + neighbour + 8 or 7) / 16.
fn h2v2_fancy_row(sums: &[i32], out: &mut [u8]) {
    let n = sums.len();
    out[0] = ((sums[0] * 4 + 8) >> 4) as u8;
    out[1] = ((sums[0] * 3 + sums[1] + 7) >> 4) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((sums[i] * 3 + sums[i - 1] + 8) >> 4) as u8;
        out[2 * i + 1] = ((sums[i] * 3 + sums[i + 1] + 7) >> 4) as u8;
    }
    out[2 * n - 2] = ((sums[n - 1] * 3 + sums[n - 2] + 8) >> 4) as u8;
    out[2 * n - 1] = ((sums[n - 1] * 4 + 7) >> 4) as u8;
}

/// YCbCr -> RGB in 16-bit fixed point (JFIF / ITU-R BT.601 coefficients), as tables.
struct ColorTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl ColorTables {
    fn new() -> Self {
        const SCALE: i32 = 16;
        const HALF: i64 = 1 << (SCALE - 1);
        let fix = |x: f64| (x * (1i64 << SCALE) as f64 + 0.5) as i64;
        let mut t = ColorTables { cr_r: [0; 256], cb_b: [0; 256], cr_g: [0; 256], cb_g: [0; 256] };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + HALF) >> SCALE) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + HALF) >> SCALE) as i32;
            t.cr_g[i] = (-fix(0.71414) * x) as i32;
            t.cb_g[i] = (-fix(0.34414) * x + HALF) as i32;
        }
        t
    }
}

/// The accurate integer inverse DCT with dequantisation (libjpeg's `JDCT_ISLOW`: 13-bit
/// constants, 2 extra bits between the passes), writing 8x8 samples to `out` (row stride
/// `stride`), level-shifted by 128 and range-limited as libjpeg's table does.
fn idct_islow(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    const CONST_BITS: i64 = 13;
    const PASS1_BITS: i64 = 2;
    const F0_298: i64 = 2446;
    const F0_390: i64 = 3196;
    const F0_541: i64 = 4433;
    const F0_765: i64 = 6270;
    const F0_899: i64 = 7373;
    const F1_175: i64 = 9633;
    const F1_501: i64 = 12299;
    const F1_847: i64 = 15137;
    const F1_961: i64 = 16069;
    const F2_053: i64 = 16819;
    const F2_562: i64 = 20995;
    const F3_072: i64 = 25172;
    let descale = |x: i64, n: i64| (x + (1 << (n - 1))) >> n;
    // One 1-D pass over 8 values; `even0`/`even4` are pre-shifted by the caller.
    let pass = |d: [i64; 8]| -> [i64; 8] {
        let (z2, z3) = (d[2], d[6]);
        let z1 = (z2 + z3) * F0_541;
        let tmp2 = z1 + z3 * -F1_847;
        let tmp3 = z1 + z2 * F0_765;
        let tmp0 = (d[0] + d[4]) << CONST_BITS;
        let tmp1 = (d[0] - d[4]) << CONST_BITS;
        let (t10, t13, t11, t12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
        let (mut o0, mut o1, mut o2, mut o3) = (d[7], d[5], d[3], d[1]);
        let z1 = o0 + o3;
        let z2 = o1 + o2;
        let z3 = o0 + o2;
        let z4 = o1 + o3;
        let z5 = (z3 + z4) * F1_175;
        o0 *= F0_298;
        o1 *= F2_053;
        o2 *= F3_072;
        o3 *= F1_501;
        let z1 = z1 * -F0_899;
        let z2 = z2 * -F2_562;
        let z3 = z3 * -F1_961 + z5;
        let z4 = z4 * -F0_390 + z5;
        o0 += z1 + z3;
        o1 += z2 + z4;
        o2 += z2 + z3;
        o3 += z1 + z4;
        [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]
    };
    let mut ws = [0i64; 64];
    for col in 0..8 {
        let d: [i64; 8] = std::array::from_fn(|r| coef[r * 8 + col] as i64 * q[r * 8 + col] as i64);
        let o = pass(d);
        for r in 0..8 {
            ws[r * 8 + col] = descale(o[r], CONST_BITS - PASS1_BITS);
        }
    }
    for row in 0..8 {
        let d: [i64; 8] = std::array::from_fn(|c| ws[row * 8 + c]);
        let o = pass(d);
        for c in 0..8 {
            let v = descale(o[c], CONST_BITS + PASS1_BITS + 3);
            out[row * stride + c] = range_limit(v);
        }
    }
}

/// libjpeg's IDCT range limit: `v + 128` clamped to 0..=255 for |v| < 512; outside that the
/// table index wraps modulo 1024 (only corrupt data gets there).
fn range_limit(v: i64) -> u8 {
    let k = (v & 1023) as usize;
    match k {
        0..=127 => (k + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        _ => (k - 896) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idct_of_a_dc_block_is_flat() {
        let mut coef = [0i16; 64];
        coef[0] = 80; // times quant 2: 160 -> 160/8 = 20 above the 128 level
        let q = [2u16; 64];
        let mut out = [0u8; 64];
        idct_islow(&coef, &q, &mut out, 8);
        assert!(out.iter().all(|&v| v == 148), "{out:?}");
    }

    #[test]
    fn range_limit_clamps_and_wraps_like_libjpeg() {
        assert_eq!(range_limit(0), 128);
        assert_eq!(range_limit(-128), 0);
        assert_eq!(range_limit(-300), 0);
        assert_eq!(range_limit(127), 255);
        assert_eq!(range_limit(400), 255);
        assert_eq!(range_limit(1024), 128);
    }

    #[test]
    fn fancy_upsampling_keeps_flat_rows_flat() {
        let mut out = [0u8; 8];
        h2v2_fancy_row(&[400, 400, 400, 400], &mut out);
        assert_eq!(out, [100; 8]);
        h2v1_fancy(&[7, 7, 7, 7], &mut out);
        assert_eq!(out, [7; 8]);
    }
}
