package redisstore

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
)

// keys names the store's Redis keys. Every key is base + a short name, and
// base holds a hash tag, so all of them live in one hash slot: Check, Hit and
// every other call is one script on one node, in Redis Cluster too.
//
//	base w:JAIL|N        HASH window shard N (0..windowShards-1, by a hash
//	                     of the subject): field SUBJECT = its failure window,
//	                     ≤ maxretry+1 times (µs, base 36) with their hashed
//	                     Member if any (scripts.go); TTL findtime from the
//	                     last failure in the shard. Fields whose failures
//	                     are all older than findtime are swept at most once
//	                     per findtime, by the Hits that write the shard.
//	                     Stats' Failing counts the live fields.
//	base b:SUBJECT       HASH per jail: its ban record, reason and recidive
//	                     history (scripts.go has the fields); TTL its longest
//	                     ban or recidive window
//	base bx:N            ZSET ban index shard N (0..banShards-1, by a hash
//	                     of the subject): subjects with bans, score =
//	                     latest expiry µs (Bans); TTL its longest ban
//	base bx              ZSET the single ban index of earlier versions:
//	                     no longer written; Bans still reads it and Unban
//	                     still removes from it until it expires
//	base k:KEY           STRING known device: its expiry µs; TTL its ttl
//	base st              HASH f:JAIL, b:JAIL counters (and ids), rw the
//	                     recidive window; TTL statsTTL since the last write
//	base ev              STREAM ban and unban events, MAXLEN ~ streamMaxLen;
//	                     TTL streamTTL since the last event
//
// Every TTL above also has slack added (see Store), so that nodes whose
// clocks differ by a little never see a live key vanish.
//
// Windows are fields of a few shared hashes rather than a key each: a key
// costs Redis ~150 bytes before its value (its name, the object, the main
// and the expiry dictionary entries), more than a tracked address's whole
// window, and a hash of small fields is kept as one compact listpack (~40
// bytes a field). Redis 7.0 has no expiry per field, hence the
// sweep.
type keys struct {
	base      string
	banBase   string // base + "b:"
	indexBase string // base + "bx:"
	legacy    string // base + "bx": the ban index of earlier versions
	stats     string
	events    string
}

// newKeys derives the key schema from a prefix. A prefix holding a hash tag
// ("app:{mg}:") is used as given; otherwise the tag is the prefix itself:
// "mailguard:" gives keys "mailguard:{mailguard}:…".
func newKeys(prefix string) (keys, error) {
	base := prefix
	if i := strings.IndexByte(prefix, '{'); i >= 0 {
		j := strings.IndexByte(prefix[i:], '}')
		if j <= 1 {
			return keys{}, errors.New("redisstore: prefix has an empty or unclosed hash tag")
		}
	} else {
		if strings.IndexByte(prefix, '}') >= 0 {
			return keys{}, errors.New("redisstore: prefix has an unopened hash tag")
		}
		tag := strings.Trim(prefix, ":")
		if tag == "" {
			tag = "mailguard"
		}
		base = prefix + "{" + tag + "}:"
	}
	return keys{
		base:      base,
		banBase:   base + "b:",
		indexBase: base + "bx:",
		legacy:    base + "bx",
		stats:     base + "st",
		events:    base + "ev",
	}, nil
}

// jailEscaper keeps "JAIL|SUBJECT" unambiguous whatever the jail's name.
var jailEscaper = strings.NewReplacer("%", "%25", "|", "%7C")

// windowShards is the number of window hashes per jail: up to ~100,000
// tracked subjects per jail a shard holds ~100 fields, short to scan.
// Beyond 512 fields (hash-max-listpack-entries, ~500,000 subjects), or
// with a value over 64 bytes (a window of 3 or more distinct passwords),
// Redis makes a shard a hashtable: ~100–200 bytes a field instead of ~40,
// still under a key each.
const windowShards = 1024

// window is the shard holding subject's failure window in jail (the
// subject is its field).
func (k keys) window(jail, subject string) string {
	return string(k.appendWindow(nil, jail, subject))
}

func (k keys) shard(jail string, n uint32) string {
	return string(k.appendShard(nil, jail, n))
}

func (k keys) appendWindow(b []byte, jail, subject string) []byte {
	return k.appendShard(b, jail, fnv32(subject)%windowShards)
}

func (k keys) appendShard(b []byte, jail string, n uint32) []byte {
	b = append(b, k.base...)
	b = append(b, "w:"...)
	if strings.ContainsAny(jail, "%|") {
		jail = jailEscaper.Replace(jail)
	}
	b = append(b, jail...)
	b = append(b, '|')
	return strconv.AppendUint(b, uint64(n), 10)
}

// fnv32 is FNV-1a: the same on every node (unlike maphash).
func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

func (k keys) ban(subject string) string { return k.banBase + subject }

func (k keys) appendBan(b []byte, subject string) []byte {
	return append(append(b, k.banBase...), subject...)
}

// banShards is the number of ban index shards. One sorted set of every
// banned subject cost ~120 bytes a ban (a skiplist node, a dict entry and a
// copy of the subject); up to ~120,000 bans a shard stays under
// zset-max-listpack-entries (128) and is one compact listpack, ~35 bytes a
// ban.
const banShards = 1024

// index is the ban index shard listing subject.
func (k keys) index(subject string) string {
	return k.indexShard(fnv32(subject) % banShards)
}

func (k keys) indexShard(n uint32) string {
	return string(k.appendIndex(nil, n))
}

func (k keys) appendIndex(b []byte, n uint32) []byte {
	return strconv.AppendUint(append(b, k.indexBase...), uint64(n), 10)
}

func (k keys) known(key string) string { return k.base + "k:" + key }

func (k keys) appendKnown(b []byte, key string) []byte {
	return append(append(append(b, k.base...), "k:"...), key...)
}

// member turns a Hit.Member (guard passes prefix|user|password hash) into a
// short opaque window member: Redis never holds the password hash, and a
// window entry costs 12 bytes whatever the Member's length.
func member(m string) string {
	if m == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(m))
	return "~" + base64.RawStdEncoding.EncodeToString(sum[:9])
}
