<?php

/**
 * mailguard_client_ip: tell Dovecot the browser's address.
 *
 * Roundcube logs in to Dovecot from the webmail host, so without this
 * plugin every failed webmail login is counted (by mailguard, through
 * Dovecot's auth policy) against the webmail host itself. On every IMAP
 * connection this plugin sends, before the login, an IMAP ID command
 * (RFC 2971) with x-originating-ip set to the browser's address. Dovecot
 * uses it as the client address (%{rip}, the auth policy's "remote") when
 * the webmail host is in its login_trusted_networks, and ignores it
 * otherwise.
 *
 * The browser's address is REMOTE_ADDR. Only when REMOTE_ADDR is one of
 * mailguard_client_ip_trusted_proxies is X-Forwarded-For read: from the
 * right, past every trusted proxy, to the first address that is not one.
 * Anything a browser sends is never trusted on its own.
 *
 * Needs Roundcube 1.5 or later (the storage_connect hook's preauth_ident).
 * Part of mailguard: https://github.com/mailguard/mailguard
 *
 * @license GPL-3.0-or-later (as Roundcube's plugins)
 */
class mailguard_client_ip extends rcube_plugin
{
    /** @var array|null trusted proxies as [packed address, prefix bits] */
    private $proxies;

    public function init()
    {
        $this->load_config();
        $this->add_hook('storage_connect', [$this, 'storage_connect']);
    }

    /**
     * storage_connect hook: add x-originating-ip to the ID Roundcube
     * sends before it authenticates (keeping any other ID fields).
     */
    public function storage_connect($args)
    {
        $ip = self::client_ip($_SERVER, $this->proxies());
        if ($ip === null) {
            return $args;
        }
        $ident = (isset($args['preauth_ident']) && is_array($args['preauth_ident'])) ? $args['preauth_ident'] : [];
        $ident['x-originating-ip'] = $ip;
        $args['preauth_ident'] = $ident;
        return $args;
    }

    /**
     * The trusted proxies from the config, parsed once; a bad entry is
     * logged (once per request) and left out.
     */
    private function proxies()
    {
        if ($this->proxies === null) {
            $list = rcube::get_instance()->config->get('mailguard_client_ip_trusted_proxies', []);
            list($this->proxies, $bad) = self::parse_networks((array) $list);
            foreach ($bad as $entry) {
                rcube::raise_error([
                        'code' => 500, 'file' => __FILE__, 'line' => __LINE__,
                        'message' => 'mailguard_client_ip: mailguard_client_ip_trusted_proxies: not an address or address/bits, left out: '
                            . json_encode((string) $entry),
                    ], true, false);
            }
        }
        return $this->proxies;
    }

    /**
     * The browser's address for a request ($server is $_SERVER), or null
     * when REMOTE_ADDR is not an address (nothing is sent then).
     *
     * @param array $server   the request's $_SERVER
     * @param array $proxies  parse_networks' result
     */
    public static function client_ip(array $server, array $proxies)
    {
        $remote = self::address(isset($server['REMOTE_ADDR']) ? $server['REMOTE_ADDR'] : '');
        if ($remote === null) {
            return null;
        }
        $client = $remote;
        if (self::trusted($client, $proxies) && !empty($server['HTTP_X_FORWARDED_FOR'])) {
            // Right to left: each hop was added by the one after it, and
            // only a trusted proxy's word about its own peer counts. An
            // entry that is not an address ends the walk at the last
            // address a trusted proxy vouched for.
            foreach (array_reverse(explode(',', (string) $server['HTTP_X_FORWARDED_FOR'])) as $hop) {
                $ip = self::address($hop);
                if ($ip === null) {
                    break;
                }
                $client = $ip;
                if (!self::trusted($ip, $proxies)) {
                    break;
                }
            }
        }
        return inet_ntop($client);
    }

    /**
     * Parses "address" and "address/bits" entries (IPv4 or IPv6) into
     * [[packed, bits], ...] and the list of entries that are neither.
     */
    public static function parse_networks(array $list)
    {
        $nets = [];
        $bad = [];
        foreach ($list as $entry) {
            $parts = explode('/', trim((string) $entry), 2);
            $ip = self::address($parts[0], false);
            $max = $ip === null ? 0 : strlen($ip) * 8;
            $bits = $max;
            if ($ip !== null && count($parts) == 2) {
                $bits = preg_match('/^[0-9]{1,3}$/', $parts[1]) ? (int) $parts[1] : -1;
            }
            if ($ip === null || $bits < 0 || $bits > $max) {
                $bad[] = $entry;
                continue;
            }
            $nets[] = [$ip, $bits];
        }
        return [$nets, $bad];
    }

    /**
     * The packed address (4 or 16 bytes) of a textual one, IPv4-mapped
     * IPv6 as IPv4; with $ports, also "1.2.3.4:port" and "[v6]:port" as
     * some proxies write them. Null when it is not an address.
     */
    private static function address($s, $ports = true)
    {
        $s = trim((string) $s);
        if ($ports && preg_match('/^\[([0-9A-Fa-f:.]+)\](:\d+)?$/', $s, $m)) {
            $s = $m[1];
        } elseif ($ports && preg_match('/^(\d+\.\d+\.\d+\.\d+):\d+$/', $s, $m)) {
            $s = $m[1];
        }
        if ($s === '' || strpos($s, '%') !== false || filter_var($s, FILTER_VALIDATE_IP) === false) {
            return null;
        }
        $packed = inet_pton($s);
        if ($packed === false) {
            return null;
        }
        if (strlen($packed) == 16 && substr($packed, 0, 12) === "\0\0\0\0\0\0\0\0\0\0\xff\xff") {
            $packed = substr($packed, 12);
        }
        return $packed;
    }

    /** Whether the packed address is inside one of the networks. */
    private static function trusted($ip, array $nets)
    {
        foreach ($nets as $net) {
            list($base, $bits) = $net;
            if (strlen($base) != strlen($ip)) {
                continue;
            }
            $bytes = intdiv($bits, 8);
            if (substr($base, 0, $bytes) !== substr($ip, 0, $bytes)) {
                continue;
            }
            $rest = $bits % 8;
            if ($rest == 0) {
                return true;
            }
            $mask = (0xff << (8 - $rest)) & 0xff;
            if ((ord($base[$bytes]) & $mask) == (ord($ip[$bytes]) & $mask)) {
                return true;
            }
        }
        return false;
    }
}
