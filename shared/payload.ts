// Verifiable payloads: every payload byte is a function of (stream, position), so any receiver can check any
// frame or TCP segment on its own. A page poisoned by its guest after the grant came back (0xdb), or data read
// from the wrong page, shows up as a mismatch: that is how an early grant return becomes a visible corruption.
import { err, ok, type Result } from './result.js';

/** Bytes of the tag at the start of a tagged (datagram) payload: u32 stream, u32 position, little-endian. */
export const PAYLOAD_TAG_LEN = 8;

/** The byte a stream carries at a position. Adjacent bytes differ and a constant fill matches ~1/256 of them. */
export function patternByte(stream: number, pos: number): number {
  return (Math.imul(pos, 251) + Math.imul(pos >>> 8, 13) + Math.imul(stream, 101)) & 0xff;
}

/** Fills `len` bytes at `off` with the stream's pattern starting at stream position `pos`. */
export function fillPattern(buf: Uint8Array, off: number, len: number, stream: number, pos: number): void {
  for (let i = 0; i < len; i++) buf[off + i] = patternByte(stream, pos + i);
}

/** The index (relative to `off`) of the first byte that is not the stream's pattern, or -1 when all match. */
export function findPatternMismatch(buf: Uint8Array, off: number, len: number, stream: number, pos: number): number {
  for (let i = 0; i < len; i++) if (buf[off + i] !== patternByte(stream, pos + i)) return i;
  return -1;
}

/** Writes a tagged payload of `len` >= PAYLOAD_TAG_LEN bytes: the tag, then the pattern from `pos`. */
export function writeTaggedPayload(buf: Uint8Array, off: number, len: number, stream: number, pos: number): void {
  if (len < PAYLOAD_TAG_LEN) throw new RangeError(`tagged payload needs >= ${PAYLOAD_TAG_LEN} bytes, got ${len}`);
  const v = new DataView(buf.buffer, buf.byteOffset + off, PAYLOAD_TAG_LEN);
  v.setUint32(0, stream >>> 0, true);
  v.setUint32(4, pos >>> 0, true);
  fillPattern(buf, off + PAYLOAD_TAG_LEN, len - PAYLOAD_TAG_LEN, stream, pos);
}

/** Checks a tagged payload received from anywhere; returns its stream and position, or what is wrong. */
export function checkTaggedPayload(buf: Uint8Array, off: number, len: number): Result<{ stream: number; pos: number }> {
  if (len < PAYLOAD_TAG_LEN) return err(`payload is too short: expected >= ${PAYLOAD_TAG_LEN} bytes but got ${len}`);
  const v = new DataView(buf.buffer, buf.byteOffset + off, PAYLOAD_TAG_LEN);
  const stream = v.getUint32(0, true);
  const pos = v.getUint32(4, true);
  const bad = findPatternMismatch(buf, off + PAYLOAD_TAG_LEN, len - PAYLOAD_TAG_LEN, stream, pos);
  if (bad >= 0) {
    const got = buf[off + PAYLOAD_TAG_LEN + bad]!;
    const want = patternByte(stream, pos + bad);
    return err(`payload is corrupt at byte ${PAYLOAD_TAG_LEN + bad}: expected 0x${want.toString(16)} but got 0x${got.toString(16)}`);
  }
  return ok({ stream, pos });
}
