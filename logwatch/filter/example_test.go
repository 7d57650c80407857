package filter_test

import (
	"fmt"
	"time"

	"github.com/mailguard/mailguard/logwatch/filter"
)

// One Tracker per source: each line in order, with the time it was read;
// the failures it returns are the clients to count.
func ExampleTracker() {
	f, err := filter.LoadShipped("postfix", "", nil)
	if err != nil {
		panic(err)
	}
	tr := f.NewTracker()
	now := time.Date(2026, 11, 29, 9, 30, 0, 0, time.UTC)
	for _, line := range []string{
		"Nov 29 09:25:15 mx postfix/smtpd[32009]: connect from unknown[127.0.0.11]",
		"Nov 29 09:25:15 mx postfix/smtpd[32009]: NOQUEUE: reject: RCPT from unknown[127.0.0.11]: 454 4.7.1 <a@example.org>: Relay access denied; from=<a@example.net> to=<a@example.org> proto=ESMTP helo=<x>",
	} {
		for _, fl := range tr.Line(line, now) {
			fmt.Println(fl.Host, fl.Time.Format(time.TimeOnly))
		}
	}
	// Output: 127.0.0.11 09:25:15
}
