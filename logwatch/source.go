package logwatch

import "context"

// Where Postfix logs on Debian: the file rsyslog writes, or, without
// rsyslog (Debian 12's default), the journal of its systemd unit. The
// default postfix jail reads the first of them that exists.
const (
	PostfixLog     = "/var/log/mail.log"
	PostfixJournal = "_SYSTEMD_UNIT=postfix@-.service"
)

// Source is what Follower and Journal have in common: a source of lines
// that is started once, reports its health and is stopped.
type Source interface {
	Start(ctx context.Context, deliver func(Line)) error
	Stop()
	Health() error
}

var (
	_ Source = (*Follower)(nil)
	_ Source = (*Journal)(nil)
)
