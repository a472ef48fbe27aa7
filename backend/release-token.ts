// token: Alexey Kuznetsov's transaction token, as Vladislav Bolkhovitin relays it in seed 002 (netdev, 2008-12-23):
// skb_shared_info gains `transaction_token` pointing at
//   struct sk_transaction_token { atomic_t io_count; *next; unsigned long token; unsigned long private; finish_callback; }
// "Before starting new asynchronous send a client would open a new token. Everything sent then would receive
// that token." Derived skbs inherit it; "If 2 skb are merged ... the *older* token is inherited". The finish
// callback runs "when io_count == 0 *AND* all previous tokens closed".
// Here: the sender is a GrantSink (one netback queue); each attach opens a token (io_count 1: the send itself),
// puts it on every shinfo of the packet (io_count +1 each), and closes it (io_count -1). io_count counts the
// shinfos carrying it; finish runs in open order per sender and returns the packet's grants.
// Two variants: 'token' embeds the token in the sender's preallocated per-packet state (a pool per sender, no
// allocation per send: Bolkhovitin's answer), 'token-alloc' allocates one per send (Polyakov's objection:
// "it requires additional allocation").
// Age is a per-stack serial; the order that holds finishes back is per sender, so a merge of two senders' skbs
// (coalesce across guests) leaves the younger sender's token free to finish while its pages sit under the other's.
import type { Page } from './page.js';
import type { DesignInfo, GrantSink, RefDataOp } from './release.js';
import { ATOMIC_BYTES, POINTER_BYTES, PageList, attachTargets } from './release-util.js';
import type { SkbContext, SkBuff, SkbSharedInfo } from './skbuff.js';

/** struct sk_transaction_token (seed 002). */
export class TransactionToken {
  /** atomic_t io_count: the open send plus every shinfo carrying the token. */
  ioCount = 0;
  /** The sender's next (younger) token. */
  next: TransactionToken | null = null;
  /** unsigned long token: the age (smaller is older), a per-stack serial. */
  token = 0;
  /** The sender whose FIFO orders this token's finish. */
  sender: TokenSender | null = null;
  /** unsigned long private: what finish_callback returns (the packet's grants). */
  readonly list = new PageList();
}

/** One client's open tokens in open order, and (embedded variant) its preallocated tokens. */
export class TokenSender {
  head: TransactionToken | null = null;
  tail: TransactionToken | null = null;
  readonly pool: TransactionToken[] = [];
}

/** Per-stack state: the age serial and one sender per sink. */
class TokenState {
  serial = 0;
  readonly senders = new Map<GrantSink, TokenSender>();
  readonly tree: SkbSharedInfo[] = [];
}

function state(ctx: SkbContext): TokenState {
  let st = ctx.designState as TokenState | null;
  if (st === null) {
    st = new TokenState();
    ctx.designState = st;
  }
  return st;
}

/** Drops one io_count; finishes every token at the head of its sender's FIFO whose io_count is 0. */
function tokenPut(ctx: SkbContext, t: TransactionToken, embedded: boolean): void {
  if (t.ioCount <= 0) throw new Error(`transaction token ${t.token}: io_count underflow`);
  if (--t.ioCount !== 0) return;
  const s = t.sender!;
  while (s.head !== null && s.head.ioCount === 0) {
    const done = s.head;
    s.head = done.next;
    if (s.head === null) s.tail = null;
    done.next = null;
    done.sender = null;
    ctx.stats.tokensFinished++;
    // finish_callback
    done.list.releaseAll(true);
    if (embedded) s.pool.push(done);
  }
}

/** shinfo `s` inherits `t` unless it already carries an older token (the older wins); io_count follows. */
function inherit(ctx: SkbContext, s: SkbSharedInfo, t: TransactionToken | null, embedded: boolean): void {
  if (t === null) return;
  const cur = s.transactionToken as TransactionToken | null;
  if (cur === t) return;
  if (cur !== null && cur.token < t.token) return;
  t.ioCount++;
  s.transactionToken = t;
  if (cur !== null) tokenPut(ctx, cur, embedded);
}

/** The shinfo's token goes (its data was released, or copied by skb_orphan_frags). */
function drop(s: SkbSharedInfo, embedded: boolean): void {
  const t = s.transactionToken as TransactionToken | null;
  if (t === null) return;
  s.transactionToken = null;
  tokenPut(s.ctx, t, embedded);
}

function makeToken(name: 'token' | 'token-alloc', embedded: boolean): DesignInfo {
  return {
    name,
    source: embedded
      ? 'seed 002: A. Kuznetsov\'s transaction token (via V. Bolkhovitin, netdev 2008-12-23), embedded in the sender\'s command'
      : 'seed 002: A. Kuznetsov\'s transaction token, allocated per send (E. Polyakov: "it requires additional allocation")',
    sound: false,
    unsoundCases: ['coalesce across guests'],
    bookkeeping: {
      perSkb: POINTER_BYTES,
      perPage: POINTER_BYTES,
      // io_count (padded to 8), next, token, private, finish_callback.
      perPacket: 2 * ATOMIC_BYTES + 4 * POINTER_BYTES,
      note: 'shinfo transaction_token; sk_transaction_token {io_count, next, token, private, finish_callback}; one page pointer per grant in private',
    },
    attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
      if (skb.users === 0) throw new Error('attach: skb is freed');
      const ctx = skb.ctx;
      const st = state(ctx);
      let s = st.senders.get(sink);
      if (s === undefined) {
        s = new TokenSender();
        st.senders.set(sink, s);
      }
      // Open: the send holds io_count 1 until it closes.
      let t = embedded ? s.pool.pop() : undefined;
      if (t === undefined) {
        t = new TransactionToken();
        ctx.stats.designAllocs++;
      }
      t.ioCount = 1;
      t.token = ++st.serial;
      t.sender = s;
      t.list.fill(pages, sink);
      if (s.tail === null) s.head = t;
      else s.tail.next = t;
      s.tail = t;
      // Everything sent receives the token.
      const tree = st.tree;
      tree.length = 0;
      attachTargets(skb, pages, tree);
      for (let i = 0; i < tree.length; i++) inherit(ctx, tree[i]!, t, embedded);
      tree.length = 0;
      // Close.
      tokenPut(ctx, t, embedded);
    },
    refDataParent(parent: SkBuff, child: SkbSharedInfo, _op: RefDataOp): void {
      // "When skb is translated, transaction_token inherited."
      inherit(parent.ctx, child, parent.shinfo.transactionToken as TransactionToken | null, embedded);
    },
    mayMoveFrags(_from: SkBuff, _to: SkBuff): boolean {
      return true;
    },
    fragsMoved(from: SkBuff, to: SkBuff): void {
      // "If 2 skb are merged ... the *older* token is inherited."
      inherit(to.ctx, to.shinfo, from.shinfo.transactionToken as TransactionToken | null, embedded);
    },
    shinfoRelease(s: SkbSharedInfo): void {
      drop(s, embedded);
    },
    orphaned(s: SkbSharedInfo): void {
      drop(s, embedded);
    },
  };
}

/** seed 002: Kuznetsov's transaction token embedded in the sender's per-packet state (no allocation per send). */
export const token: DesignInfo = makeToken('token', true);
/** seed 002: the same token allocated per send (Polyakov's objection). */
export const tokenAlloc: DesignInfo = makeToken('token-alloc', false);
