// Guest memory: one SharedArrayBuffer of 4096-byte frames addressed by frame number (a guest's "pfn"
// space). The owner builds it from a frame count; a peer (a backend worker, the "hypervisor") wraps the
// same buffer. Views are built once and cached, so handing out a frame never allocates after first use.

/** log2 of the Xen page size. */
export const XEN_PAGE_SHIFT = 12; // include/xen/page.h

/** Bytes in one Xen page (frame). */
export const XEN_PAGE_SIZE = 1 << XEN_PAGE_SHIFT; // include/xen/page.h

/** Most frames one GuestMemory may hold (4 GiB): frame numbers stay well inside a u32 grant frame. */
export const GUEST_MEMORY_MAX_FRAMES = 1 << 20;

/** A guest's memory: `nrFrames` frames of XEN_PAGE_SIZE bytes in one SharedArrayBuffer. */
export class GuestMemory {
  /** The shared buffer (post it to a worker and wrap it there with `GuestMemory.fromBuffer`). */
  readonly sab: SharedArrayBuffer;
  /** Number of frames; valid frame numbers are 0 <= n < nrFrames. */
  readonly nrFrames: number;
  /** The whole memory as bytes. */
  readonly bytes: Uint8Array;
  // Lazily built, then cached per frame: a guest may be large and most frames are never granted.
  private readonly views: (Uint8Array | undefined)[];

  private constructor(sab: SharedArrayBuffer, nrFrames: number) {
    this.sab = sab;
    this.nrFrames = nrFrames;
    this.bytes = new Uint8Array(sab);
    this.views = new Array<Uint8Array | undefined>(nrFrames);
  }

  /** Allocates zeroed memory of `nrFrames` frames (owner side); throws RangeError on a bad count. */
  static create(nrFrames: number): GuestMemory {
    if (!Number.isInteger(nrFrames) || nrFrames < 1 || nrFrames > GUEST_MEMORY_MAX_FRAMES) {
      throw new RangeError(
        `nrFrames must be an integer in [1, ${GUEST_MEMORY_MAX_FRAMES}] but got ${String(nrFrames)}`,
      );
    }
    return new GuestMemory(new SharedArrayBuffer(nrFrames * XEN_PAGE_SIZE), nrFrames);
  }

  /** Wraps an existing buffer (peer side, e.g. in a worker); throws RangeError unless it is whole frames. */
  static fromBuffer(sab: SharedArrayBuffer): GuestMemory {
    const len = sab.byteLength;
    if (len === 0 || len % XEN_PAGE_SIZE !== 0 || len / XEN_PAGE_SIZE > GUEST_MEMORY_MAX_FRAMES) {
      throw new RangeError(
        `guest memory must be 1 to ${GUEST_MEMORY_MAX_FRAMES} whole frames of ${XEN_PAGE_SIZE} bytes but got ${len} bytes`,
      );
    }
    return new GuestMemory(sab, len / XEN_PAGE_SIZE);
  }

  /** True when `n` names a frame of this memory (use it on peer-supplied frame numbers). */
  hasFrame(n: number): boolean {
    return Number.isInteger(n) && n >= 0 && n < this.nrFrames;
  }

  /** The cached XEN_PAGE_SIZE-byte view of frame `n` (never a copy); throws RangeError for our callers' bad `n`. */
  frame(n: number): Uint8Array {
    const v = this.views[n];
    if (v !== undefined) return v;
    if (!this.hasFrame(n)) {
      throw new RangeError(`frame is out of range: expected 0 <= x < ${this.nrFrames} but got ${String(n)}`);
    }
    const view = new Uint8Array(this.sab, n * XEN_PAGE_SIZE, XEN_PAGE_SIZE);
    this.views[n] = view;
    return view;
  }
}
