//! Managers (issue #11): every proxy kind across real processes, dead and
//! restarted managers, dead clients, hostile clients, Python clients.

use std::time::{Duration, Instant};

use corral::manager::{Kind, Manager, ManagerError};
use corral_fixtures::within;

corral::test_support!();

#[test]
fn dict_basics_in_one_process() {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, u64>().unwrap();
    d.insert("a".into(), 1).unwrap();
    d.insert("b".into(), 2).unwrap();
    assert_eq!(d.get(&"a".into()).unwrap(), Some(1));
    assert_eq!(d.get(&"zz".into()).unwrap(), None);
    assert_eq!(d.len().unwrap(), 2);
    assert_eq!(d.keys().unwrap(), vec!["a".to_string(), "b".to_string()]);
    assert_eq!(d.add("a".into(), 5).unwrap(), 6);
    assert_eq!(d.remove(&"b".into()).unwrap(), Some(2));
    assert_eq!(d.snapshot().unwrap(), vec![("a".to_string(), 6)]);
}
