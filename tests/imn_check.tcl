# Reads a CORE .imn scenario the way the legacy Tcl GUI of CORE 7/8 does (its loader reads the
# whole file as ONE Tcl list of objects and walks it class by class), and prints what the GUI
# would hold, one fact per line, for tests/emulate_core.rs to compare with the topology:
#
#   object CLASS ID                 every object, in file order
#   comments N                      then N lines: the comments block
#   node ID FIELD VALUE             type, model, canvas of a node
#   hostname ID NAME
#   address ID IFACE ADDR/PREFIX    from network-config
#   peer ID IFACE PEER              interface-peer
#   services ID NAME...
#   config ID CONFIG-ID N           then N lines: the config {...} lines of a custom-config,
#                                   joined the way the GUI sends them to the daemon
#   link ID NODE1 NODE2
#   linkopt ID FIELD VALUE          bandwidth (bps), delay and jitter (us), ber (loss %),
#                                   duplicate (%) of a link, as the GUI reads them
#
# Anything the GUI would refuse or drop (not a Tcl list, an unknown class or field, a field
# without a value, a malformed block) is an error: one line on stderr, exit status 1.
# Usage: tclsh imn_check.tcl FILE.imn

proc fail {msg} {
    puts stderr "imn_check: $msg"
    exit 1
}

# The network-config and custom-config values are brace blocks whose lines start with a tab;
# the GUI removes one leading tab per line.
proc block_lines {value} {
    set out {}
    foreach l [split $value "\n"] {
        if {[string index $l 0] eq "\t"} { set l [string range $l 1 end] }
        lappend out $l
    }
    return $out
}

proc emit_lines {head lines} {
    puts "$head [llength $lines]"
    foreach l $lines { puts $l }
}

set path [lindex $argv 0]
if {[catch {open $path r} fd]} { fail "cannot open $path: $fd" }
set cfg {}
# Exactly the GUI's read (gui/filemgmt.tcl, gui/core.tcl).
if {[catch {foreach entry [read $fd] { lappend cfg $entry }} err]} {
    fail "the file is not one Tcl list: $err"
}
close $fd

# The fields the loader knows per class (others are dropped with a warning, or for links kept
# as opaque data).
set node_fields {type mirror model cpu interface-peer network-config custom-enabled
    custom-command custom-config ipsec-enabled ipsec-config iconcoords labelcoords canvas
    hidden custom-pre-config-commands custom-post-config-commands custom-image ine-config
    tunnel-peer range bandwidth delay ber location os services}
set canvas_fields {name size bkgImage wallpaper wallpaper-style scale refpt}

set i 0
set n [llength $cfg]
while {$i < $n} {
    set class [lindex $cfg $i]
    switch -exact -- $class {
        comments - traffic - script {
            # CLASS {BODY}
            if {$i + 1 >= $n} { fail "$class without a body at the end" }
            puts "object $class -"
            if {$class eq "comments"} {
                emit_lines comments [split [string trim [lindex $cfg [expr {$i + 1}]]] "\n"]
            }
            incr i 2
            continue
        }
        node - link - canvas - plot - option - annotation - hook {}
        default { fail "unknown object class '$class' (the GUI stops reading objects here)" }
    }
    if {$i + 2 >= $n} { fail "$class without an id and a body at the end" }
    set id [lindex $cfg [expr {$i + 1}]]
    set body [lindex $cfg [expr {$i + 2}]]
    incr i 3
    puts "object $class $id"
    if {$class eq "hook"} { continue }
    set line [concat $body]
    if {[catch {llength $line} err]} { fail "$class $id: its body is not a Tcl list: $err" }
    if {[llength $line] % 2 != 0} { fail "$class $id: a field without a value" }
    foreach {field value} $line {
        switch -exact -- $class {
            node {
                if {$field ni $node_fields} { fail "node $id: unknown field '$field'" }
                switch -exact -- $field {
                    type - model - canvas { puts "node $id $field $value" }
                    services { puts "services $id [join $value { }]" }
                    interface-peer {
                        if {[llength $value] != 2} { fail "node $id: interface-peer {$value}" }
                        puts "peer $id [lindex $value 0] [lindex $value 1]"
                    }
                    network-config {
                        set iface ""
                        foreach l [lrange [block_lines $value] 1 end-1] {
                            set w [split [string trim $l] " "]
                            switch -glob -- [string trim $l] {
                                "hostname *" { puts "hostname $id [lindex $w 1]" }
                                "interface *" { set iface [lindex $w 1] }
                                "ip address *" - "ipv6 address *" {
                                    if {$iface eq ""} { fail "node $id: address outside an interface" }
                                    puts "address $id $iface [lindex $w 2]"
                                }
                                "!" - "" {}
                                default { fail "node $id: network-config line '$l'" }
                            }
                        }
                    }
                    custom-config {
                        # As the loader: lines before the config line are fields, the lines after
                        # it are the config, without the closing brace and the indentation.
                        set cid ""
                        set have 0
                        set lines {}
                        foreach l [block_lines $value] {
                            if {$l eq "config \{"} {
                                set have 1
                            } elseif {$have} {
                                lappend lines $l
                            } elseif {[string match "custom-config-id *" $l]} {
                                set cid [lindex [split $l " "] 1]
                            }
                        }
                        if {!$have || $cid eq ""} { fail "node $id: custom-config without id or config" }
                        if {[lindex $lines end-1] ne "\}"} { fail "node $id: $cid: config block not closed on its own line" }
                        emit_lines "config $id $cid" [lrange $lines 0 end-2]
                    }
                }
            }
            link {
                if {$field eq "nodes"} {
                    if {[llength $value] != 2} { fail "link $id: nodes {$value}" }
                    puts "link $id [lindex $value 0] [lindex $value 1]"
                } elseif {$field in {bandwidth delay jitter ber duplicate}} {
                    # As the GUI's getLinkDelay etc. read them: one value, or {down up}; the
                    # GUI shows and sends numbers only.
                    set down [lindex $value 0]
                    if {![string is double -strict $down]} { fail "link $id: $field '$value' is not a number" }
                    if {[llength $value] > 1} { fail "link $id: $field has separate up/down values" }
                    puts "linkopt $id $field $down"
                }
            }
            canvas {
                if {$field ni $canvas_fields} { fail "canvas $id: unknown field '$field'" }
            }
        }
    }
}
