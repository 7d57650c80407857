// Package contrib embeds the Postfix and Dovecot snippets shipped in this
// directory, so that `mailguard setup` prints and installs exactly what the
// documentation shows: the files here are the one source of both.
package contrib

import (
	"embed"
	"fmt"
)

//go:embed dovecot/*.conf postfix/main.cf nginx/mailguard-totp.conf
var files embed.FS

// Names of the embedded files.
const (
	PostfixMain = "postfix/main.cf"
	Dovecot23   = "dovecot/95-mailguard.conf"
	Dovecot24   = "dovecot/95-mailguard-2.4.conf"
	// NginxTOTP is the location block of the TOTP page (README, TOTP).
	NginxTOTP = "nginx/mailguard-totp.conf"
)

// File returns an embedded file by name (PostfixMain, Dovecot23, Dovecot24).
func File(name string) ([]byte, error) {
	b, err := files.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("contrib: %w", err)
	}
	return b, nil
}

// Dovecot returns the name and text of the conf.d file for Dovecot
// major.minor: 2.3 and 2.4 (and later 2.x, which keep 2.4's syntax).
func Dovecot(major, minor int) (string, []byte, error) {
	var name string
	switch {
	case major == 2 && minor == 3:
		name = Dovecot23
	case major == 2 && minor >= 4:
		name = Dovecot24
	default:
		return "", nil, fmt.Errorf("contrib: no Dovecot file for version %d.%d (2.3 and 2.4 are supported)", major, minor)
	}
	b, err := File(name)
	return name, b, err
}
