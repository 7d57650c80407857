package redisstore

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
)

// keys names the store's Redis keys. Every key is base + a short name, and
// base holds a hash tag, so all of them live in one hash slot: Check, Hit and
// every other call is one script on one node, in Redis Cluster too.
//
//	base w:JAIL|SUBJECT  ZSET failure window: member = failure id (or hashed
//	                     Member), score = time µs; ≤ maxretry+1 entries;
//	                     TTL findtime from the last failure
//	base f:JAIL          ZSET subjects failing in JAIL, score = end of their
//	                     window µs (Stats' Failing); TTL the longest window
//	base b:SUBJECT       HASH per jail: its ban record, reason and recidive
//	                     history (scripts.go has the fields); TTL its longest
//	                     ban or recidive window
//	base bx              ZSET subjects with bans, score = latest expiry µs
//	                     (Bans); TTL its longest ban
//	base k:KEY           STRING known device: its expiry µs; TTL its ttl
//	base st              HASH f:JAIL, b:JAIL counters (and ids), rw the
//	                     recidive window; TTL statsTTL since the last write
//	base ev              STREAM ban and unban events, MAXLEN ~ streamMaxLen;
//	                     TTL streamTTL since the last event
//
// Every TTL above also has slack added (see Store), so that nodes whose
// clocks differ by a little never see a live key vanish.
type keys struct {
	base    string
	banBase string // base + "b:"
	index   string
	stats   string
	events  string
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
		base:    base,
		banBase: base + "b:",
		index:   base + "bx",
		stats:   base + "st",
		events:  base + "ev",
	}, nil
}

// jailEscaper keeps "JAIL|SUBJECT" unambiguous whatever the jail's name.
var jailEscaper = strings.NewReplacer("%", "%25", "|", "%7C")

func (k keys) window(jail, subject string) string {
	return k.base + "w:" + jailEscaper.Replace(jail) + "|" + subject
}

func (k keys) failing(jail string) string { return k.base + "f:" + jail }
func (k keys) ban(subject string) string  { return k.banBase + subject }
func (k keys) known(key string) string    { return k.base + "k:" + key }

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
