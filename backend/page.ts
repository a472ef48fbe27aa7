// struct page for the backend's emulated Linux stack: 4096-byte frames with a get_page/put_page count.
// Local pages come from a per-stack pool; foreign pages are views into guest memory mapped through a
// grant (netback's mmap_pages[pending_idx]), owned and recycled by netback, and never copied here.

import type { SkbContext } from './skbuff.js';

/** Bytes in a page (include/asm-generic/page.h with PAGE_SHIFT 12; Xen's XEN_PAGE_SIZE). */
export const PAGE_SIZE = 4096;

/** The grant a foreign page was mapped from. */
export interface GrantIdentity {
  readonly domid: number;
  readonly gref: number;
}

/** Placeholder frame of a foreign Page object that is not bound to a grant (never written). */
const UNBOUND_BYTES = new Uint8Array(PAGE_SIZE);

/** struct page: a 4096-byte frame with a reference count. */
export class Page {
  /** Dense small integer, unique per Page object within one SkbContext; stays across re-bindings. */
  readonly id: number;
  /** Exactly PAGE_SIZE bytes: a local buffer, or a view into guest memory (never copied). */
  bytes: Uint8Array;
  /** Non-null while this page is a mapped guest grant. */
  foreign: GrantIdentity | null;
  /** get_page/put_page reference count; 0 means free (local: in the pool; foreign: unbound). */
  count: number;
  /**
   * The per-page pointer a release design keeps (release.ts): seed 002's net_priv (the owning packet), Xen's
   * foreign-page destructor (the sink), rusty-page's owning GrantRelease; null for every other design.
   */
  priv: unknown;

  constructor(id: number, bytes: Uint8Array) {
    this.id = id;
    this.bytes = bytes;
    this.foreign = null;
    this.count = 0;
    this.priv = null;
  }
}

/** The local page allocator of one stack instance: a free list, so steady state allocates nothing. */
export class PagePool {
  /** Local pages whose count reached 0, ready for reuse. */
  readonly free: Page[] = [];
  /** Next Page.id to hand out (ids are dense per SkbContext and never reused by another object). */
  nextId = 0;
  /** Fill freed local pages with POISON_BYTE, so a stale reader sees garbage rather than old data. */
  poison = false;
}

/** Byte written over a freed local page when poisoning is on (mm/page_poison.c uses 0xaa). */
export const PAGE_POISON = 0xaa;

/** Creates a Page object with a fresh id and no binding (count 0); netback binds it with bindForeignPage. */
export function newPage(ctx: SkbContext): Page {
  return new Page(ctx.pages.nextId++, UNBOUND_BYTES);
}

/** alloc_page(): a local page with count 1, from the pool when one is free. */
export function allocPage(ctx: SkbContext): Page {
  const pool = ctx.pages;
  let page = pool.free.pop();
  if (page === undefined) {
    page = new Page(pool.nextId++, new Uint8Array(PAGE_SIZE));
  } else if (page.count !== 0) {
    throw new Error(`page ${page.id} in the free pool has count ${page.count}`);
  }
  page.count = 1;
  ctx.stats.pageAllocs++;
  return page;
}

/** (Re)binds a Page object to a mapped grant with count 1, the mapping's own reference (netback's gnttab map). */
export function bindForeignPage(page: Page, bytes: Uint8Array, grant: GrantIdentity): void {
  if (bytes.length !== PAGE_SIZE) {
    throw new Error(`bindForeignPage: page ${page.id} needs ${PAGE_SIZE} bytes but got ${bytes.length}`);
  }
  // count 1 is the previous mapping's own ref not yet dropped; more means the stack still holds the old grant's page.
  if (page.count > 1) {
    throw new Error(`bindForeignPage: page ${page.id} still has ${page.count - 1} stack references to grant ${describeGrant(page.foreign)}`);
  }
  // A design that still tags the page would account the new grant to the old owner.
  if (page.priv !== null) {
    throw new Error(`bindForeignPage: page ${page.id} still carries release-design state for grant ${describeGrant(page.foreign)}`);
  }
  page.bytes = bytes;
  page.foreign = grant;
  page.count = 1;
}

/** Drops the mapping's own reference of a foreign page after its grant went back (netback's unmap); bytes stay as the old view. */
export function unbindForeignPage(ctx: SkbContext, page: Page): void {
  if (page.foreign === null) throw new Error(`unbindForeignPage: page ${page.id} is not foreign`);
  if (page.count !== 1) {
    throw new Error(`unbindForeignPage: page ${page.id} (grant ${describeGrant(page.foreign)}) has count ${page.count}, expected 1`);
  }
  page.count = 0;
  page.foreign = null;
  ctx.stats.pagePuts++;
}

/**
 * get_page(): count++ (include/linux/mm.h); a page with count 0 is free, so taking a ref is our own bug.
 * Seed 002's net_get_page: the design's pageGet hook runs first (absent for rusty and naive).
 */
export function getPage(ctx: SkbContext, page: Page): void {
  if (page.count <= 0) throw new Error(`get_page on free page ${page.id}`);
  const d = ctx.design;
  if (d.pageGet !== undefined) d.pageGet(ctx, page);
  page.count++;
  ctx.stats.pageGets++;
}

/**
 * put_page(): count--; a local page reaching 0 goes back to the pool (a foreign one stays netback's).
 * The design's pagePut hook (seed 002's net_put_page, Xen's foreign-page destructor) runs after the decrement.
 */
export function putPage(ctx: SkbContext, page: Page): void {
  if (page.count <= 0) throw new Error(`put_page on free page ${page.id}`);
  page.count--;
  ctx.stats.pagePuts++;
  const d = ctx.design;
  if (d.pagePut !== undefined) d.pagePut(ctx, page);
  if (page.count === 0 && page.foreign === null) {
    const pool = ctx.pages;
    if (pool.poison) page.bytes.fill(PAGE_POISON);
    pool.free.push(page);
    ctx.stats.pageFrees++;
  }
}

/** `domid:gref` of a grant, or `none`. */
function describeGrant(g: GrantIdentity | null): string {
  return g === null ? 'none' : `${g.domid}:${g.gref}`;
}
