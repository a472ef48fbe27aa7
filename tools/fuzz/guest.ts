// The fake guest of the fuzz harness: a block of guest memory (shared/memory.ts) whose frames are filled with a
// pattern unique to each mapping and poisoned when the grant comes back, so a read through a page whose
// grant was returned too early shows up as corrupt data (the second, independent detector).
import { GuestMemory, XEN_PAGE_SIZE } from '../../shared/memory.js';

/** Bytes in a guest frame (include/xen/page.h XEN_PAGE_SIZE). */
export const FRAME_SIZE = XEN_PAGE_SIZE;

/** The byte the guest fills a frame with once its grant is handed back (a use-after-free becomes visible). */
export const POISON_BYTE = 0xdb;

/** The guest's domain id as netback sees it. */
export const GUEST_DOMID = 1;

/** A fake guest: `frames` frames of guest memory, a FIFO of free frames, grant references, fill and poison. */
export class FakeGuest {
  readonly frames: number;
  readonly memory: GuestMemory;
  private readonly bytes: Uint8Array[] = [];
  private readonly words: Uint32Array[] = [];
  private readonly freeRing: Int32Array;
  private freeHead = 0;
  private freeCount: number;
  private nextGref = 8; // grefs 0-7 are reserved in Linux (GNTTAB_NR_RESERVED_ENTRIES)

  constructor(frames: number) {
    this.frames = frames;
    this.memory = GuestMemory.create(frames);
    this.freeRing = new Int32Array(frames);
    for (let f = 0; f < frames; f++) {
      // Views built once: a mapping never allocates.
      this.bytes.push(this.memory.frame(f));
      this.words.push(new Uint32Array(this.memory.sab, f * FRAME_SIZE, FRAME_SIZE / 4));
      this.freeRing[f] = f;
    }
    this.freeCount = frames;
  }

  /** How many frames are free. */
  get freeFrames(): number {
    return this.freeCount;
  }

  /** Takes the least recently freed frame (FIFO delays reuse, so stale reads hit poison first), or -1. */
  allocFrame(): number {
    if (this.freeCount === 0) return -1;
    const f = this.freeRing[this.freeHead]!;
    this.freeHead = (this.freeHead + 1) % this.frames;
    this.freeCount--;
    return f;
  }

  /** Puts a frame back on the free FIFO. */
  freeFrame(f: number): void {
    if (this.freeCount === this.frames) throw new Error(`guest: frame ${f} freed while every frame is free`);
    this.freeRing[(this.freeHead + this.freeCount) % this.frames] = f;
    this.freeCount++;
  }

  /** A fresh grant reference for a new mapping. */
  newGref(): number {
    return this.nextGref++;
  }

  /** The frame's bytes (a view into guest memory; never copied). */
  view(f: number): Uint8Array {
    return this.bytes[f]!;
  }

  /** Fills a frame with the pattern of mapping `serial` (xorshift32 words; distinct serials give distinct data). */
  fill(f: number, serial: number): void {
    const w = this.words[f]!;
    let x = (Math.imul(serial + 1, 0x9e3779b9) ^ 0x5bd1e995) >>> 0 || 1;
    for (let i = 0; i < w.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      w[i] = x;
    }
  }

  /** The guest got the grant back: it reuses the frame, here by poisoning it. */
  poison(f: number): void {
    this.bytes[f]!.fill(POISON_BYTE);
  }
}
