<?php
// Runs mailguard_client_ip's address logic outside Roundcube for
// contrib/roundcube_test.go: argv[1] is the plugin file, stdin a JSON array
// of {"server": $_SERVER, "proxies": [...]}, stdout a JSON array of
// {"ip": client_ip or null, "bad": the proxies entries left out}.
class rcube_plugin
{
}

require $argv[1];

$out = [];
foreach (json_decode(stream_get_contents(STDIN), true) as $c) {
    list($nets, $bad) = mailguard_client_ip::parse_networks($c['proxies']);
    $out[] = ['ip' => mailguard_client_ip::client_ip($c['server'], $nets), 'bad' => $bad];
}
echo json_encode($out);
