// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// kumo's DNS answer path in XDP: a UDP query over IPv4 to the listener's
// address and port whose bytes (after the id) were answered before is
// answered here, in the driver, from the `answers` map that the
// user-space server fills with its own replies. The reply goes back out
// of the interface it came in on (XDP_TX); everything else, misses
// included, goes on to the socket (XDP_PASS), where the server answers
// and remembers it.
//
// Why this exists: per query, the kernel's UDP socket path (receive,
// wake-up, send) costs several times what answering does; this path
// skips all of it. The reply is the server's own, byte for byte, so
// this program makes no DNS decision of its own: it matches bytes.
//
// Built by scripts/build-xdp.sh; the object is committed beside this file
// and a test checks that it is what this source builds to.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>

#define SEC(name) __attribute__((section(name), used))
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_xdp_adjust_tail)(struct xdp_md *ctx, int delta) = (void *)BPF_FUNC_xdp_adjust_tail;
static long (*bpf_xdp_load_bytes)(struct xdp_md *ctx, __u32 offset, void *buf, __u32 len) =
	(void *)BPF_FUNC_xdp_load_bytes;
static long (*bpf_xdp_store_bytes)(struct xdp_md *ctx, __u32 offset, void *buf, __u32 len) =
	(void *)BPF_FUNC_xdp_store_bytes;

// Legacy map definitions (no BTF), so the object builds the same from
// the same source on any clang: the layout aya reads from "maps".
struct map_def {
	__u32 type;
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	__u32 map_flags;
};

// Must match `xdp.rs`.
#define KEY_MAX 124
#define REPLY_MAX 504
#define ANSWERS 16384

// A query's bytes after its id, zero-padded.
struct key {
	__u16 len;
	__u16 pad;
	__u8 bytes[KEY_MAX];
};

// The reply's bytes after its id, and the zones' generation it was
// answered from.
struct answer {
	__u32 generation;
	__u16 len;
	__u16 nxdomain;
	__u8 bytes[REPLY_MAX];
};

struct config {
	__u32 addr;       // the listener's IPv4 address, network order
	__u16 port;       // network order
	__u16 pad;
	__u32 generation; // answers of another generation are stale
};

enum stat { ANSWERED, NXDOMAIN, MISSED, FAILED, STATS };

struct map_def SEC("maps") answers = {
	.type = BPF_MAP_TYPE_LRU_HASH,
	.key_size = sizeof(struct key),
	.value_size = sizeof(struct answer),
	.max_entries = ANSWERS,
};

struct map_def SEC("maps") config = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(struct config),
	.max_entries = 1,
};

struct map_def SEC("maps") stats = {
	.type = BPF_MAP_TYPE_PERCPU_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = STATS,
};

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &which);
	if (n)
		*n += 1;
}

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

#define HEADERS (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

SEC("xdp")
int kumo_dns_answer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = data + sizeof(*eth) + sizeof(*ip);
	__u8 *dns = data + HEADERS;

	if ((void *)(dns + 12) > end)
		return XDP_PASS;
	if (eth->h_proto != __builtin_bswap16(ETH_P_IP))
		return XDP_PASS;
	// No options, no fragments: those take the ordinary path.
	if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & __builtin_bswap16(0x3fff)))
		return XDP_PASS;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	// Address 0: the listener is on every address.
	if (!cfg || udp->dest != cfg->port || (cfg->addr && ip->daddr != cfg->addr))
		return XDP_PASS;
	// Responses are the server's to drop and count.
	if (dns[2] & 0x80)
		return XDP_PASS;
	__u32 udp_len = __builtin_bswap16(udp->len);
	__u32 ip_len = __builtin_bswap16(ip->tot_len);
	// The frame holds exactly the IP packet, the packet exactly the
	// datagram (a padded short frame takes the ordinary path).
	if (udp_len < sizeof(*udp) + 12 || ip_len != sizeof(*ip) + udp_len ||
	    data + sizeof(*eth) + ip_len != end)
		return XDP_PASS;
	__u32 query_len = udp_len - sizeof(*udp);

	struct key key;
	__builtin_memset(&key, 0, sizeof(key));
	__u32 key_len = query_len - 2;
	if (key_len > KEY_MAX)
		return XDP_PASS;
	key.len = key_len;
	if (bpf_xdp_load_bytes(ctx, HEADERS + 2, key.bytes, key_len))
		return XDP_PASS;
	struct answer *a = bpf_map_lookup_elem(&answers, &key);
	if (!a || a->generation != cfg->generation) {
		count(MISSED);
		return XDP_PASS;
	}
	__u32 reply_len = a->len;
	if (reply_len == 0 || reply_len > REPLY_MAX)
		return XDP_PASS;

	// The addresses, before the packet may move.
	unsigned char client_mac[ETH_ALEN], our_mac[ETH_ALEN];
	__builtin_memcpy(client_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(our_mac, eth->h_dest, ETH_ALEN);
	__u32 client = ip->saddr, us = ip->daddr;
	__u16 sport = udp->source;
	int delta = (int)reply_len - (int)key_len;
	if (bpf_xdp_adjust_tail(ctx, delta)) {
		count(FAILED);
		return XDP_PASS;
	}
	if (bpf_xdp_store_bytes(ctx, HEADERS + 2, a->bytes, reply_len)) {
		// The query is cut or grown already: nothing to pass on.
		count(FAILED);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	ip = data + sizeof(*eth);
	udp = data + sizeof(*eth) + sizeof(*ip);
	if ((void *)(udp + 1) > end) {
		count(FAILED);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, our_mac, ETH_ALEN);
	ip->tot_len = __builtin_bswap16(sizeof(*ip) + sizeof(*udp) + 2 + reply_len);
	ip->ttl = 64;
	ip->saddr = us;
	ip->daddr = client;
	ip->check = 0;
	ip->check = ip_checksum(ip);
	udp->source = udp->dest;
	udp->dest = sport;
	udp->len = __builtin_bswap16(sizeof(*udp) + 2 + reply_len);
	// Optional over IPv4 (RFC 768); the socket path's offload leaves
	// nothing to reuse.
	udp->check = 0;
	count(ANSWERED);
	if (a->nxdomain)
		count(NXDOMAIN);
	return XDP_TX;
}

