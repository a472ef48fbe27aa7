// struct net_device reduced to what the backend stack needs (include/linux/netdevice.h). Frames travel at L2:
// when startXmit(skb) is called, skb.data points at the Ethernet header and skb.macHeader === skb.data.
// Ownership: startXmit takes one reference; the caller must not touch the skb afterwards.
import type { SkBuff } from './skbuff.js';

/** The offload features the model distinguishes: NETIF_F_SG and NETIF_F_TSO (include/linux/netdev_features.h). */
export interface NetdevFeatures {
  readonly sg: boolean;
  readonly tso: boolean;
}

/** struct net_device reduced to what the model needs. */
export interface NetDevice {
  readonly name: string;
  readonly mtu: number;
  readonly features: NetdevFeatures;
  /** ndo_start_xmit: takes one reference to skb. Never throws for bad frames: drop and count. */
  startXmit(skb: SkBuff): void;
}

/** Anything that keeps skbs: the grant oracle walks all holders to know which skbs are live. */
export interface SkbHolder {
  forEachSkb(fn: (skb: SkBuff) => void): void;
}

/** The default Ethernet MTU (ETH_DATA_LEN, include/uapi/linux/if_ether.h). */
export const DEFAULT_MTU = 1500;

/** Linux's default txqueuelen: DEFAULT_TX_QUEUE_LEN, set by ether_setup (net/ethernet/eth.c). */
export const DEFAULT_TX_QUEUE_LEN = 1000;

/**
 * netdev_fix_features (net/core/dev.c): TSO needs scatter-gather, so a device asked for TSO without SG
 * gets TSO turned off ("Dropping TSO features since no SG feature").
 */
export function fixFeatures(f: NetdevFeatures): NetdevFeatures {
  return { sg: f.sg, tso: f.tso && f.sg };
}

/** A ptype_all handler (dev_queue_xmit_nit): sees every frame a device transmits and clones what it keeps. */
export interface PacketTap {
  capture(skb: SkBuff): void;
}
